"""`oasis` as a person types it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

OASIS = str(Path(sys.executable).with_name("oasis"))


def test_help_lists_serve() -> None:
    out = subprocess.run([OASIS, "--help"], capture_output=True, text=True, check=True).stdout
    assert "serve" in out


def test_missing_model_file_is_one_clear_line(tmp_path: Path) -> None:
    proc = subprocess.run([OASIS, "serve", "--model", str(tmp_path / "nope.gguf")],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2
    assert "no such GGUF file" in proc.stderr and "oasis pull" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_invalid_setting_is_refused(tmp_path: Path) -> None:
    proc = subprocess.run([OASIS, "serve", "--port", "99999"], capture_output=True, text=True,
                          cwd=tmp_path)
    assert proc.returncode == 2
    assert "port" in proc.stderr and "Traceback" not in proc.stderr


def test_no_auth_is_refused_on_a_network_address(tmp_path: Path) -> None:
    proc = subprocess.run([OASIS, "serve", "--no-auth", "--host", "0.0.0.0"],
                          capture_output=True, text=True, cwd=tmp_path,
                          env={**os.environ, "OASIS_DATA_DIR": str(tmp_path)})
    assert proc.returncode == 2
    assert "--no-auth is refused on 0.0.0.0" in proc.stderr


def test_speculative_flags_are_serve_options(tmp_path: Path) -> None:
    out = subprocess.run([OASIS, "serve", "--help"], capture_output=True, text=True,
                         check=True, env={**os.environ, "COLUMNS": "200"}).stdout
    for flag in ("--prompt-lookup", "--no-prompt-lookup", "--jump-forward", "--no-jump-forward"):
        assert flag in out
    # parsed with the others: this start is refused for its host, not for the new flags
    proc = subprocess.run([OASIS, "serve", "--prompt-lookup", "--no-jump-forward", "--no-auth",
                           "--host", "0.0.0.0"], capture_output=True, text=True, cwd=tmp_path,
                          env={**os.environ, "OASIS_DATA_DIR": str(tmp_path)})
    assert proc.returncode == 2
    assert "--no-auth is refused on 0.0.0.0" in proc.stderr
