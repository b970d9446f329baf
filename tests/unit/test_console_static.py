"""The console's page and files (routes/console.py) and the security headers on every answer."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from oasis.server.errors import install_error_handlers
from oasis.server.routes.console import CSP, FOLDER, build_id, make_router
from tests.conftest import make_app


@pytest.fixture
def web(tmp_path: Path) -> TestClient:
    with TestClient(make_app(tmp=tmp_path)) as client:
        yield client


def test_index_needs_no_key_and_is_not_cached(web: TestClient) -> None:
    r = web.get("/")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    assert r.headers["cache-control"] == "no-store"
    assert r.headers["content-security-policy"] == CSP
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["x-frame-options"] == "DENY"
    assert r.headers["referrer-policy"] == "no-referrer"
    assert "{{BUILD}}" not in r.text
    # the CSP forbids inline scripts and styles: the page has none
    assert not re.search(r"<script(?![^>]*\bsrc=)", r.text)
    assert "style=" not in r.text and "<style" not in r.text


def test_assets_under_the_build_are_immutable(web: TestClient) -> None:
    build = build_id(FOLDER)
    page = web.get("/").text
    assert f"/console/static/{build}/console.js" in page
    r = web.get(f"/console/static/{build}/console.js")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/javascript")
    assert "immutable" in r.headers["cache-control"]
    css = web.get(f"/console/static/{build}/console.css")
    assert css.headers["content-type"].startswith("text/css")
    # without the build (or with an older one) the file is served, to be revalidated
    for path in ("/console/static/console.js", "/console/static/000000000000/console.js"):
        r = web.get(path)
        assert r.status_code == 200 and r.headers["cache-control"] == "no-cache"


def test_every_module_is_served(web: TestClient) -> None:
    build = build_id(FOLDER)
    for file in FOLDER.iterdir():
        if file.suffix in (".js", ".css", ".svg"):
            assert web.get(f"/console/static/{build}/{file.name}").status_code == 200, file


@pytest.mark.parametrize("path", [
    "../routes/console.py", "%2e%2e/routes/console.py", "..%2Froutes%2Fconsole.py",
    "x/../../app.py", "index.html", ".hidden.js", "nope.js", "", "a/b/c.js", "..\\app.py",
    "%00.js",
])
def test_only_files_of_the_folder(web: TestClient, path: str) -> None:
    r = web.get(f"/console/static/{path}")
    assert r.status_code == 404
    assert r.json()["error"]["type"] == "invalid_request_error"
    assert r.headers["content-security-policy"] == CSP


def test_headers_on_the_api_too(web: TestClient) -> None:
    r = web.get("/v1/models")  # no key: 401, still with the headers
    assert r.status_code == 401
    assert r.headers["content-security-policy"] == CSP
    assert web.get("/health").json()["status"] == "ok"


LONG = "a" * 300


@pytest.mark.parametrize("path", [
    LONG + ".js", LONG, f"{'0' * 12}/{LONG}.js", "x" * 5000 + ".css", "console%00.js",
    "console.js%00", "%00", "é.js", "console\u2028.js", "конс.js", "%2fetc%2fpasswd",
    "%2Fconsole.js", "..%2fconsole.js", "console.js%2f", "..%5cconsole.js", "\\console.js",
    "console.js\\", "%5c%5cserver%5cshare.js", "a%2fb.js", "console.js/",
    "CONSOLE.JS", "console.js.", "console.js ", "%20console.js", "console.js%3F",
])
def test_any_other_name_is_a_404_never_a_500(tmp_path: Path, path: str) -> None:
    """A name the file system cannot hold (too long: ENAMETOOLONG once made it a 500), with a
    NUL, a backslash, an encoded slash or any Unicode: only the folder's own files are
    answered, from the map read at start."""
    with TestClient(make_app(tmp=tmp_path), raise_server_exceptions=False) as web:
        for prefix in ("", build_id(FOLDER) + "/"):
            r = web.get(f"/console/static/{prefix}{path}")
            assert r.status_code == 404, (prefix, path, r.status_code)
            assert r.json()["error"]["type"] == "invalid_request_error"


def test_files_are_read_once_and_revalidated_by_etag(tmp_path: Path) -> None:
    folder = tmp_path / "console"
    folder.mkdir()
    (folder / "index.html").write_text("<p>{{BUILD}}</p>", encoding="utf-8")
    (folder / "app.js").write_text("export const a = 1;\n", encoding="utf-8")
    (folder / "notes.txt").write_text("not served", encoding="utf-8")
    (folder / "sub").mkdir()
    (folder / "sub.js").symlink_to(folder / "app.js")
    app = FastAPI()
    app.include_router(make_router(folder))
    install_error_handlers(app)
    with TestClient(app) as web:
        (folder / "app.js").write_text("export const a = 2;\n", encoding="utf-8")
        (folder / "late.js").write_text("x", encoding="utf-8")
        r = web.get("/console/static/app.js")
        assert r.status_code == 200 and r.text == "export const a = 1;\n"  # read at start
        etag = r.headers["etag"]
        assert web.get("/console/static/sub.js").text == r.text
        again = web.get("/console/static/app.js", headers={"If-None-Match": etag})
        assert again.status_code == 304 and again.headers["etag"] == etag
        other = web.get("/console/static/app.js", headers={"If-None-Match": '"x"'})
        assert other.status_code == 200
        for name in ("late.js", "notes.txt", "sub", "index.html"):
            assert web.get(f"/console/static/{name}").status_code == 404, name
