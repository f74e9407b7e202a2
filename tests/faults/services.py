"""Services a fault test may break on purpose, all on loopback and private to the test:

    RedisServer        a redis-server on a free port, no persistence: `restart()` brings it back empty
    TcpProxy           a TCP relay; `cut()` drops every connection and refuses new ones, `restore()` undoes it
    FaultyHttpProxy    an HTTP relay that answers 503 SlowDown to a chosen share of matching requests

None of them touches the shared PostgreSQL, Redis or SeaweedFS: they stand in front of them.
"""

from __future__ import annotations

import contextlib
import http.client
import random
import re
import shutil
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from tests.services import free_fixed_port, free_port

REDIS_START_TIMEOUT_SECONDS = 20.0
PROXY_BUFFER_BYTES = 65536
ACCEPT_POLL_SECONDS = 0.1
SLOW_DOWN_BODY = (
    b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
    b"<Message>injected fault: please reduce your request rate</Message></Error>"
)


@dataclass
class RedisServer:
    """A redis-server of the test's own, on a free loopback port, keeping nothing on disk."""

    folder: Path
    port: int = field(default_factory=free_fixed_port)  # restart() binds it again
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """`redis://127.0.0.1:<port>/0`."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start the server and wait until it answers PING; raise FileNotFoundError without redis-server."""
        binary = shutil.which("redis-server")
        if binary is None:
            raise FileNotFoundError("redis-server")
        self.folder.mkdir(parents=True, exist_ok=True)
        log = (self.folder / "redis.log").open("ab")
        self.process = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.folder),
            ],
            stdout=log,
            stderr=log,
        )
        log.close()
        deadline = time.monotonic() + REDIS_START_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(64).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"redis-server on port {self.port} did not answer PING")

    def stop(self) -> None:
        """Kill the server (its data is gone: nothing is persisted)."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.kill()
            process.wait(timeout=10)

    def restart(self, down_seconds: float = 0.0) -> None:
        """Kill the server, wait `down_seconds`, start it again empty on the same port."""
        self.stop()
        time.sleep(down_seconds)
        self.start()


class TcpProxy:
    """A TCP relay from a free loopback port to `upstream`; `cut()` makes the upstream unreachable."""

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.port = free_port()
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self.connections = 0

    def start(self) -> TcpProxy:
        """Listen and relay until `cut()` or `stop()`."""
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(128)
        self._listener = listener
        self._thread = threading.Thread(target=self._accept, args=(listener,), daemon=True)
        self._thread.start()
        return self

    def _accept(self, listener: socket.socket) -> None:
        # accept() with a short timeout: closing a socket from another thread does not wake a blocked accept.
        listener.settimeout(ACCEPT_POLL_SECONDS)
        while self._listener is listener:
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:  # closed by cut()/stop()
                return
            if self._listener is not listener:
                client.close()
                return
            client.settimeout(None)
            try:
                server = socket.create_connection(self.upstream, timeout=5)
                server.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                self.connections += 1
                self._sockets.update((client, server))
            for source, target in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(source, target), daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket) -> None:
        try:
            while data := source.recv(PROXY_BUFFER_BYTES):
                target.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, target):
                self._close(sock)

    def _close(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.discard(sock)
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        sock.close()

    def cut(self) -> None:
        """Drop every relayed connection and stop listening: new connections are refused."""
        listener, self._listener = self._listener, None
        if self._thread is not None:
            self._thread.join(timeout=5)
        if listener is not None:
            listener.close()
        with self._lock:
            open_sockets = list(self._sockets)
        for sock in open_sockets:
            self._close(sock)

    def restore(self) -> None:
        """Listen again on the same port."""
        self.start()

    def stop(self) -> None:
        """Cut for good."""
        self.cut()


class FaultyHttpProxy:
    """An HTTP/1.1 relay to `upstream` (host:port) that fails `failure_rate` of the requests whose
    "METHOD path" matches `pattern` with 503 SlowDown (an S3 error every client retries)."""

    def __init__(
        self, upstream: str, *, failure_rate: float = 0.0, pattern: str = ".*", seed: int = 0
    ) -> None:
        self.upstream = upstream
        self.failure_rate = failure_rate
        self.pattern = re.compile(pattern)
        self.random = random.Random(seed)
        self.lock = threading.Lock()
        self.forwarded = 0
        self.failed = 0
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        """The relay's base URL."""
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def start(self) -> FaultyHttpProxy:
        """Serve in a background thread."""
        self.thread.start()
        return self

    def stop(self) -> None:
        """Stop serving."""
        self.server.shutdown()
        self.server.server_close()

    def should_fail(self, method: str, path: str) -> bool:
        """Draw whether this request fails (counted)."""
        with self.lock:
            fail = bool(self.pattern.search(f"{method} {path}")) and self.random.random() < self.failure_rate
            if fail:
                self.failed += 1
            else:
                self.forwarded += 1
            return fail

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                return

            def _relay(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                if proxy.should_fail(self.command, self.path):
                    self.send_response(503)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(SLOW_DOWN_BODY)))
                    self.end_headers()
                    self.wfile.write(SLOW_DOWN_BODY)
                    return
                connection = http.client.HTTPConnection(proxy.upstream, timeout=60)
                try:
                    headers = {
                        name: value for name, value in self.headers.items() if name.lower() != "expect"
                    }
                    connection.request(self.command, self.path, body=body or None, headers=headers)
                    response = connection.getresponse()
                    data = response.read()
                    self.send_response(response.status)
                    for name, value in response.getheaders():
                        if name.lower() not in {"content-length", "transfer-encoding", "connection"}:
                            self.send_header(name, value)
                    # A HEAD answer carries the object's length, not the (empty) body's.
                    head_length = response.getheader("Content-Length") if self.command == "HEAD" else None
                    self.send_header("Content-Length", head_length or str(len(data)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(data)
                finally:
                    connection.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _relay

        return Handler
