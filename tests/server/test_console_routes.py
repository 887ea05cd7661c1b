"""The web console's files: ``/`` and ``/console/...`` served with their content types and
without the API key (which the API still needs), nothing outside the static folder, and a 404
that says how to build a console not built."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx2
import pytest

from tests.server.conftest import API_KEY, run_server

ASSETS = {
    "app.js": ("text/javascript", b"console.log('trimtab');\n"),
    "app.css": ("text/css", b"body { margin: 0; }\n"),
    "logo.png": ("image/png", b"\x89PNG\r\n\x1a\nnot really"),
    "icon.svg": ("image/svg+xml", b'<svg xmlns="http://www.w3.org/2000/svg"/>'),
    "fonts/inter.woff2": ("font/woff2", b"wOF2 bytes"),
}
PAGE = b"<!doctype html><title>trimtab console</title>"


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A built console, beside a secret the server must never hand out."""
    root = tmp_path_factory.mktemp("console")
    (root / "secret.txt").write_text("not for the console")
    static = root / "static"
    for name, (_, content) in ASSETS.items():
        (static / name).parent.mkdir(parents=True, exist_ok=True)
        (static / name).write_bytes(content)
    (static / "index.html").write_bytes(PAGE)
    (static / ".env").write_text("hidden")
    (static / "leak.txt").symlink_to(root / "secret.txt")
    return static


@pytest.fixture(scope="module")
def console_url(built: Path, idle_backend: tuple[Any, Any]) -> Iterator[str]:
    from trimtab.server.app import create_app

    with run_server(create_app(*idle_backend, api_key=API_KEY, console_dir=built)) as url:
        yield url


def get(url: str, **kwargs: Any) -> httpx2.Response:
    with httpx2.Client(timeout=30) as http:
        return http.get(url, **kwargs)


def raw_get(url: str, target: str) -> int:
    """The status of a GET of ``target`` sent as written (a client would normalise ``..``)."""
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=30) as sock:
        sock.sendall(f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        head = sock.recv(65536).decode("latin-1")
    return int(head.split()[1])


def test_the_page_and_its_assets_are_served_without_a_key(console_url):
    page = get(console_url + "/")
    assert page.status_code == 200 and page.content == PAGE
    assert page.headers["content-type"].startswith("text/html")
    for name, (kind, content) in ASSETS.items():
        asset = get(f"{console_url}/console/{name}")
        assert asset.status_code == 200, name
        assert asset.content == content
        assert asset.headers["content-type"].split(";")[0] == kind, name
        assert asset.headers["x-content-type-options"] == "nosniff"


def test_the_api_still_needs_the_key(console_url):
    assert get(console_url + "/v1/models").status_code == 401
    assert get(
        console_url + "/v1/models", headers={"Authorization": "Bearer " + API_KEY}
    ).is_success
    # Only reading the console's files is open: not another method, nor a lookalike path.
    with httpx2.Client(timeout=30) as http:
        assert http.post(console_url + "/", json={}).status_code == 401
        assert http.post(console_url + "/console/app.js").status_code == 401
    assert get(console_url + "/consolex/app.js").status_code == 401


@pytest.mark.parametrize(
    "target",
    [
        "/console/../secret.txt",
        "/console/%2e%2e/secret.txt",
        "/console/fonts/../../secret.txt",
        "/console/leak.txt",  # a link out of the folder
        "/console/.env",
        "/console/fonts",  # a folder
        "/console/",
        "/console/missing.js",
    ],
)
def test_nothing_outside_the_static_files_is_served(console_url, target):
    assert raw_get(console_url, target) == 404


def test_an_unbuilt_console_is_a_404_saying_how_to_build_it(tmp_path, idle_backend):
    from trimtab.server.app import create_app

    app = create_app(*idle_backend, api_key=API_KEY, console_dir=tmp_path)
    with run_server(app) as url:
        page = get(url + "/")
        assert page.status_code == 404 and "make console" in page.text
        assert page.headers["content-type"].startswith("text/plain")
        assert get(url + "/console/app.js").status_code == 404


def test_the_packaged_console_is_served_by_default(idle_backend):
    from trimtab.server.app import create_app
    from trimtab.server.console import STATIC

    with run_server(create_app(*idle_backend, api_key=API_KEY)) as url:
        page = get(url + "/")
    assert page.status_code == 200 and page.content == (STATIC / "index.html").read_bytes()
