"""The SDK against a hostile API: `Client.download` refuses key segments that would leave the target folder.

The peer is a real HTTP server on loopback (http.server in a thread) that answers the image listing with keys
of its choosing and serves the bytes, as a compromised or impersonated API would.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from scheduler.client import Client
from scheduler.errors import ClientError

PNG = b"\x89PNG\r\n\x1a\n-not-really-a-png"


class HostileApi:
    """Serves `GET /v1/jobs/<id>/images` with `rows` and `GET /bytes/<n>` with PNG."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []
        self.byte_requests = 0
        api = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.startswith("/v1/jobs/"):
                    body = json.dumps({"data": api.rows, "next_cursor": None}).encode()
                    kind = "application/json"
                else:
                    api.byte_requests += 1
                    body, kind = PNG, "image/png"
                self.send_response(200)
                self.send_header("content-type", kind)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def row(self, index: int, key: str, *, category: str = "a", sku: str | None = None) -> dict[str, Any]:
        """A succeeded image row pointing at this server's bytes."""
        return {
            "index": index,
            "category": category,
            "sku": sku,
            "status": "succeeded",
            "key": key,
            "sha256": hashlib.sha256(PNG).hexdigest(),
            "size_bytes": len(PNG),
            "url": f"{self.url}/bytes/{index}",
            "url_expires_at": None,
            "error": None,
        }


@pytest.fixture
def hostile_api() -> Iterator[HostileApi]:
    """The hostile peer, stopped after the test."""
    server = HostileApi()
    yield server
    server.server.shutdown()
    server.server.server_close()


def _files(folder: Path) -> list[str]:
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*") if path.is_file())


@pytest.mark.parametrize(
    ("key", "sku"),
    [
        ("t/jobs/j/../../escape.png", None),  # a '..' segment
        ("t/jobs/j/..\\..\\escape.png", None),  # backslashes (a separator on Windows)
        ("t/jobs/j/a/", None),  # an empty last segment
        ("t/jobs/j/\x00/00000001.png", None),  # NUL
        ("t/jobs/j/shards/000000.tar", "../../escape"),  # a tar job's SKU with '..'
        ("t/jobs/j/shards/000000.tar", "/etc"),  # a tar job's SKU with a separator
    ],
)
def test_download_refuses_an_unsafe_key_from_the_server_and_writes_nothing(
    hostile_api: HostileApi, tmp_path: Path, key: str, sku: str | None
) -> None:
    """Given an API whose listing has a safe image and then one whose key (or tar SKU) would leave the target
    folder, when downloading, then a ClientError names the unsafe path, no byte is fetched and no file is
    written, inside the target folder or anywhere else under the test's folder."""
    hostile_api.rows = [hostile_api.row(0, "t/jobs/j/a/00000000.png"), hostile_api.row(1, key, sku=sku)]
    target = tmp_path / "deep" / "out"
    with Client(hostile_api.url, api_key="cg_x_y") as client, pytest.raises(ClientError, match="unsafe path"):
        client.download("j", target)
    assert hostile_api.byte_requests == 0
    assert _files(tmp_path) == []


def test_download_of_safe_keys_still_mirrors_the_folders(hostile_api: HostileApi, tmp_path: Path) -> None:
    """Given the same peer answering well-formed keys (a '..' inside a name is only a name), when downloading,
    then the files land as `<category or sku>/<index>.png` inside the folder."""
    hostile_api.rows = [
        hostile_api.row(0, "t/jobs/j/a/00000000.png"),
        hostile_api.row(1, "t/jobs/j/SKU..1/00000001.png", sku="SKU..1"),
    ]
    with Client(hostile_api.url, api_key="cg_x_y") as client:
        paths = client.download("j", tmp_path)
    assert _files(tmp_path) == ["SKU..1/00000001.png", "a/00000000.png"]
    assert [path.read_bytes() for path in paths] == [PNG, PNG]


def test_download_refuses_a_file_url_from_an_api_not_on_this_machine(
    hostile_api: HostileApi, tmp_path: Path
) -> None:
    """Given an API that answers an image URL `file://` pointing at a local file (with that file's sha256, so
    the check passes), when a client that does not read local files downloads, then a ClientError names the
    file:// answer and nothing is copied into the target folder. A client reads local files by default only
    for an API on this machine (a local folder store answers file:// URLs)."""
    secret = tmp_path / "secret" / "id_rsa"
    secret.parent.mkdir()
    secret.write_bytes(b"-----BEGIN PRIVATE KEY-----")
    row = hostile_api.row(0, "t/jobs/j/a/00000000.png")
    row.update(url=secret.as_uri(), sha256=hashlib.sha256(secret.read_bytes()).hexdigest())
    hostile_api.rows = [row]
    target = tmp_path / "out"
    with (
        Client(hostile_api.url, api_key="cg_x_y", allow_file_urls=False) as client,
        pytest.raises(ClientError, match="file:// URL"),
    ):
        client.download("j", target)
    assert not target.exists() or _files(target) == []

    defaults = {
        "https://api.example.com": False,
        "http://10.0.0.5:8000": False,
        "http://127.0.0.1:8000": True,
        "http://localhost:8000": True,
        "http://[::1]:8000": True,
    }
    for url, allowed in defaults.items():
        with Client(url, api_key="cg_x_y") as client:
            assert client.allow_file_urls is allowed, url
