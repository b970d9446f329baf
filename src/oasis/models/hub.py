"""``oasis pull``: a GGUF file from the Hugging Face Hub into the model store.

The Hub is spoken through ``huggingface_hub``, which reads ``HF_ENDPOINT`` (a mirror, or a test's
fake hub) and ``HF_TOKEN`` itself. One pull:

1. ``HfApi.model_info(files_metadata=True)`` lists the repository at ``revision`` with sizes, LFS
   sha256s and the commit the revision points to; every later request names that commit, so
   the file list and the bytes come from one snapshot.
2. ``choose_file`` picks one ``.gguf`` file: ``--file`` exactly, ``--quant`` by its
   quantization, or by ``DEFAULT_QUANTS`` (see there why).
3. The file is downloaded into ``<store>/.partial/<sha256>.part`` with huggingface_hub's
   ``http_get``, which retries a dropped connection with a ``Range`` request. We keep the
   ``.part`` file ourselves rather than calling ``hf_hub_download``: since huggingface_hub 1.x
   that downloads into a per-process temporary file and deletes it on failure, so an
   interrupted multi-gigabyte download would start over; ours continues from the bytes on
   disk (``Range: bytes=N-``) in the next run.
4. The finished file's sha256 is compared with the Hub's (the LFS sha256 of the listing, else
   the ``X-Linked-Etag``); a mismatch deletes it and adds nothing.
5. ``ModelStore.add`` checks the GGUF header and moves the file in by rename.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import logging
import os
import re
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO
from urllib.parse import urlsplit

from oasis.errors import InvalidRequestError, ModelPullError, shorten
from oasis.models.store import (
    ModelStore,
    StoredModel,
    check_name,
    model_name,
    quant_from_filename,
)

log = logging.getLogger(__name__)

# When a repository holds several quantizations and neither --file nor --quant says which:
# Q4_K_M first, the common sweet spot of quality and size (llama.cpp's own recommendation of
# the k-quants: little quality lost against Q8_0 at about 60% of its size); then the next best
# 4-5 bit k-quants, the legacy Q4_0 (some repositories have nothing else), Q8_0; else the
# smallest file.
DEFAULT_QUANTS = ("Q4_K_M", "Q4_K_S", "Q5_K_M", "Q4_0", "Q8_0")
_SPLIT_RE = re.compile(r"-\d{5}-of-\d{5}\.gguf$", re.I)
_REPO_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9._-]{1,96}")
_SHA256_RE = re.compile(r"[0-9a-f]{64}")
_HASH_CHUNK = 1 << 20


@dataclass(frozen=True)
class HubFile:
    """A file of a Hub repository, as its listing describes it."""

    path: str  # the path in the repository ("model-Q4_K_M.gguf", "Q4/model.gguf")
    size: int | None
    sha256: str | None  # the LFS sha256, when the file is in LFS

    @property
    def quant(self) -> str | None:
        return quant_from_filename(self.path)


def check_repo(repo: str) -> str:
    """``repo`` if it looks like a Hub model id (``owner/name``); ``InvalidRequestError``
    otherwise (checked before any request, so a typo never reaches the network)."""
    if not _REPO_RE.fullmatch(repo) or ".." in repo or "--" in repo:
        raise InvalidRequestError(
            f"Invalid repository {shorten(repr(repo), 100)}: expected owner/name, e.g. "
            "Qwen/Qwen2.5-0.5B-Instruct-GGUF.",
            param="repo",
        )
    return repo


def _is_split(path: str) -> bool:
    return _SPLIT_RE.search(path) is not None


def _quants(files: Sequence[HubFile]) -> str:
    names = sorted({f.quant or Path(f.path).name for f in files})
    return ", ".join(names) if names else "none"


def choose_file(
    files: Sequence[HubFile], *, repo: str, file: str | None = None, quant: str | None = None
) -> HubFile:
    """The one GGUF file of ``files`` to pull (see the module docstring). Multi-part split
    GGUFs (``-00001-of-00003.gguf``) and vision projectors (``mmproj-*``) are never chosen
    by default; a split one is refused even when named."""
    if file is not None and quant is not None:
        raise InvalidRequestError("Pass --file or --quant, not both.", param="file")
    ggufs = [f for f in files if f.path.lower().endswith(".gguf")]
    if file is not None:
        matches = [f for f in files if f.path == file] or [
            f for f in files if Path(f.path).name == file
        ]
        if not matches:
            raise InvalidRequestError(
                f"{repo} has no file {shorten(repr(file), 120)}; its GGUF files: "
                + (", ".join(sorted(f.path for f in ggufs)) or "none"),
                param="file",
            )
        if len(matches) > 1:
            raise InvalidRequestError(
                f"{shorten(repr(file), 120)} names several files of {repo}: "
                + ", ".join(sorted(f.path for f in matches))
                + "; pass the full path.",
                param="file",
            )
        if _is_split(matches[0].path):
            raise _split_error(repo, [matches[0]])
        return matches[0]

    single = [f for f in ggufs if not _is_split(f.path)]
    # a vision projector (mmproj-*.gguf) is not a model to serve on its own: --file only
    candidates = [f for f in single if not Path(f.path).name.lower().startswith("mmproj")]
    if not candidates:
        if single:
            raise ModelPullError(
                f"{repo} has only vision projector files "
                f"({', '.join(f.path for f in single)}); pass --file NAME to pull one anyway.",
                code="no_gguf_files",
            )
        if ggufs:
            raise _split_error(repo, ggufs)
        raise ModelPullError(
            f"{repo} has no GGUF files (oasis serves GGUF models; look for a repository "
            "whose name ends in -GGUF).",
            code="no_gguf_files",
        )
    if quant is not None:
        wanted = quant.upper()
        exact = [f for f in candidates if f.quant == wanted]
        matches = exact or [f for f in candidates if wanted in Path(f.path).name.upper()]
        if not matches:
            raise InvalidRequestError(
                f"{repo} has no {shorten(quant, 40)} file; its quantizations: "
                f"{_quants(candidates)}.",
                param="quant",
            )
        if len(matches) > 1:
            raise InvalidRequestError(
                f"--quant {shorten(quant, 40)} matches several files of {repo}: "
                + ", ".join(sorted(f.path for f in matches))
                + "; pass --file NAME.",
                param="quant",
            )
        return matches[0]

    if len(candidates) == 1:
        return candidates[0]
    for preferred in DEFAULT_QUANTS:
        matches = [f for f in candidates if f.quant == preferred]
        if matches:
            return min(matches, key=_size_then_path)
    return min(candidates, key=_size_then_path)


def _size_then_path(f: HubFile) -> tuple[int, str]:
    return (f.size if f.size is not None else 1 << 62, f.path)


def _split_error(repo: str, files: Sequence[HubFile]) -> InvalidRequestError:
    names = ", ".join(sorted(f.path for f in files)[:6])
    return InvalidRequestError(
        f"{repo}: multi-part (split) GGUF files are not supported yet ({names}). Pick a "
        "quantization that is one file, or merge the parts with llama.cpp's "
        "`llama-gguf-split --merge` and serve the result with `oasis serve --model FILE`.",
        param="file",
    )


def pull(
    repo: str,
    *,
    store: ModelStore,
    file: str | None = None,
    quant: str | None = None,
    name: str | None = None,
    revision: str = "main",
    token: str | None = None,
    progress: bool = True,
    endpoint: str | None = None,
) -> StoredModel:
    """Download one GGUF file of the Hub repository ``repo`` into ``store`` (see the module
    docstring) and return its entry. ``token`` overrides ``HF_TOKEN``. Raises
    ``InvalidRequestError`` (bad arguments, no such file or quant), ``ModelPullError`` (the Hub
    refused, could not be reached, the download was cut or does not match its checksum: a
    cut download is kept and continued by the next pull) and ``InvalidModelFileError`` (the
    file is not GGUF). ``endpoint`` overrides ``HF_ENDPOINT`` (which huggingface_hub reads
    once, when imported)."""
    check_repo(repo)
    if name is not None:
        check_name(name)
    if not revision or len(revision) > 256:
        raise InvalidRequestError("Invalid --revision.", param="revision")
    from huggingface_hub import HfApi, constants

    endpoint = (endpoint or constants.ENDPOINT).rstrip("/")
    with _hub_errors(repo, endpoint, token):
        api = HfApi(endpoint=endpoint, token=token)
        info = api.model_info(repo, revision=revision, files_metadata=True)
    commit = info.sha or revision
    files = [
        HubFile(s.rfilename, s.size, s.lfs.sha256 if s.lfs is not None else None)
        for s in info.siblings or []
    ]
    chosen = choose_file(files, repo=repo, file=file, quant=quant)
    name = name or model_name(repo, chosen.path)
    log.info("pulling %s/%s@%s as %s", repo, chosen.path, commit, name)
    path, sha256 = _download(
        repo, chosen, commit, store, endpoint=endpoint, token=token, progress=progress
    )
    try:
        return store.add(name, path, source=f"hf:{repo}/{chosen.path}@{commit}", sha256=sha256)
    finally:
        # the file was moved into the store, or it is not one the store takes: gone either way
        with contextlib.suppress(OSError):
            path.unlink()
        with contextlib.suppress(OSError):
            path.parent.rmdir()


def _download(
    repo: str,
    hub_file: HubFile,
    commit: str,
    store: ModelStore,
    *,
    endpoint: str,
    token: str | None,
    progress: bool,
) -> tuple[Path, str]:
    """The file, downloaded (or continued) and verified: its path in the store's partial
    directory (under its own name) and its sha256."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url
    from huggingface_hub.file_download import http_get

    # public (huggingface_hub.utils lists it), lazily exported: mypy does not see it
    from huggingface_hub.utils import build_hf_headers  # type: ignore[attr-defined]

    url = hf_hub_url(repo, hub_file.path, revision=commit, endpoint=endpoint)
    with _hub_errors(repo, endpoint, token):
        meta = get_hf_file_metadata(url, token=token)
    etag = (meta.etag or "").strip('"').lower()
    expected_sha = hub_file.sha256 or (etag if _SHA256_RE.fullmatch(etag) else None)
    expected_size = meta.size if meta.size is not None else hub_file.size
    headers = build_hf_headers(token=token)
    download_url = meta.location or url
    if urlsplit(download_url).netloc != urlsplit(url).netloc:
        # a signed CDN URL: the Hub token is not for it (huggingface_hub does the same)
        headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}

    key = expected_sha or hashlib.sha256(f"{repo}/{hub_file.path}@{commit}".encode()).hexdigest()
    partial_dir = store.partial_dir
    partial_dir.mkdir(parents=True, exist_ok=True)
    part = partial_dir / f"{key}.part"
    with part.open("ab") as f, _exclusive(f, repo, hub_file.path):
        have = f.tell()
        if expected_size is not None and have > expected_size:
            f.truncate(0)
            have = 0
        if have:
            log.info("continuing %s from byte %d", hub_file.path, have)
        if expected_size is not None:
            _check_space(partial_dir, expected_size - have)
        with _progress_bars(progress), _hub_errors(repo, endpoint, token, part=part):
            http_get(
                download_url,
                f,
                resume_size=have,
                headers=headers,
                expected_size=expected_size,
                displayed_filename=Path(hub_file.path).name,
            )
        f.flush()
        os.fsync(f.fileno())
    sha256 = _sha256(part)
    if expected_sha is None:
        log.warning(
            "%s/%s: the Hub gives no sha256 for it (not an LFS file); not verified",
            repo,
            hub_file.path,
        )
    elif sha256 != expected_sha:
        part.unlink(missing_ok=True)
        raise ModelPullError(
            f"The download of {repo}/{hub_file.path} is corrupt: its sha256 is {sha256}, the "
            f"Hub says {expected_sha}. It was deleted and nothing was added; pull again.",
            code="checksum_mismatch",
        )
    final_dir = partial_dir / key
    final_dir.mkdir(exist_ok=True)
    final = final_dir / Path(hub_file.path).name
    os.replace(part, final)
    return final, sha256


@contextlib.contextmanager
def _exclusive(f: BinaryIO, repo: str, path: str) -> Iterator[None]:
    """One pull of a file at a time: two would append to one ``.part`` file."""
    import fcntl

    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise ModelPullError(
            f"Another `oasis pull` is downloading {repo}/{path} into this store right now.",
            code="pull_in_progress",
        ) from None
    try:
        yield
    finally:
        fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _check_space(directory: Path, needed: int) -> None:
    free = shutil.disk_usage(directory).free
    if needed > free:
        raise ModelPullError(
            f"Not enough disk space in {directory}: the download needs {needed} more bytes, "
            f"{free} are free.",
            code="disk_full",
        )


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


@contextlib.contextmanager
def _progress_bars(show: bool) -> Iterator[None]:
    """huggingface_hub's tqdm bars on, or off for this download (HF_HUB_DISABLE_PROGRESS_BARS
    still wins)."""
    from huggingface_hub.utils.tqdm import (
        are_progress_bars_disabled,
        disable_progress_bars,
        enable_progress_bars,
    )

    if show or are_progress_bars_disabled():
        yield
        return
    disable_progress_bars()
    try:
        yield
    finally:
        enable_progress_bars()


def _transport_errors() -> tuple[type[BaseException], ...]:
    """The "could not talk to the server" exceptions of the HTTP client huggingface_hub uses
    (httpx2 in 2.x, httpx in 1.x, requests in 0.x)."""
    found: list[type[BaseException]] = []
    for module, attr in (
        ("httpx2", "TransportError"),
        ("httpx", "TransportError"),
        ("requests", "ConnectionError"),
        ("requests", "Timeout"),
    ):
        with contextlib.suppress(ImportError, AttributeError):
            found.append(getattr(importlib.import_module(module), attr))
    return tuple(found)


@contextlib.contextmanager
def _hub_errors(
    repo: str, endpoint: str, token: str | None, *, part: Path | None = None
) -> Iterator[None]:
    """huggingface_hub's and the HTTP client's exceptions as ``ModelPullError``s that say what
    to do."""
    from huggingface_hub import get_token
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    has_token = bool(token or get_token())
    page = f"{endpoint.rstrip('/')}/{repo}"
    kept = ""
    if part is not None:
        kept = " The bytes received are kept: run the same command again to continue."
    try:
        yield
    except GatedRepoError:
        raise ModelPullError(
            f"{repo} is gated: "
            + (
                f"your token has no access to it yet; accept its conditions at {page}"
                if has_token
                else f"accept its conditions at {page}, then set HF_TOKEN to a token "
                "of that account"
            )
            + ".",
            code="gated_repo",
        ) from None
    except RepositoryNotFoundError:
        raise ModelPullError(
            f"Repository {repo} was not found on {endpoint}"
            + (
                " (or your token cannot read it)."
                if has_token
                else "; if it is private or gated, set HF_TOKEN to a token that can read it."
            ),
            code="repo_not_found",
        ) from None
    except RevisionNotFoundError:
        raise ModelPullError(
            f"{repo} has no revision by that name on {endpoint}.", code="revision_not_found"
        ) from None
    except EntryNotFoundError:
        raise ModelPullError(
            f"The file is no longer in {repo} on {endpoint}; pull again.", code="file_not_found"
        ) from None
    except OfflineModeIsEnabled:
        raise ModelPullError(
            "HF_HUB_OFFLINE is set: unset it to download from the Hub.", code="hub_offline"
        ) from None
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else None
        hint = ""
        if status in (401, 403):
            hint = (
                ": your token may not read it" if has_token else ": set HF_TOKEN to a token"
            ) + " (a private or gated repository)"
        raise ModelPullError(
            f"{endpoint} answered HTTP {status} for {repo}{hint}.{kept}",
            code="hub_http_error",
        ) from None
    except _transport_errors() as exc:
        raise ModelPullError(
            f"Cannot reach the Hub at {endpoint} ({type(exc).__name__}: "
            f"{shorten(str(exc) or 'no detail', 200)}); check the network, or HF_ENDPOINT.{kept}",
            code="hub_unreachable",
        ) from None
    except OSError as exc:
        # huggingface_hub's "Consistency check failed" (the server sent fewer bytes than it
        # announced), its FileMetadataError (not a Hub at that address), local write errors
        raise ModelPullError(
            f"Talking to {endpoint} about {repo} failed: {shorten(str(exc), 300)}.{kept}",
            code="download_failed",
        ) from None
