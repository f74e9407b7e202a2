"""Small-object PUT throughput and CPU per PUT of four S3 clients against the same S3 server, in one run.

    .venv/bin/python bench/bench_upload.py --count 4000 --size 2600 --extra-path /tmp/ubench/rust \\
        --aiobotocore-path /tmp/ubench/aio

Clients (each in fresh processes of its own — `--processes N` of them started together, as `catalogan worker
--concurrency N` would run — one client after the other, against one SeaweedFS started here, or `--endpoint`):

- `boto3-threads`: what the worker does today — `db.storage.s3.make_s3_client`, `put_object` from a
  `ThreadPoolExecutor` of `--threads`;
- `boto3-crt`: boto3's transfer manager with `preferred_transfer_client="crt"` (pip `boto3[crt]`, i.e.
  `awscrt`): uploads run in the CRT's native threads;
- `aiobotocore`: `put_object` on one asyncio loop, `--threads` requests in flight;
- `obstore` (Rust `object_store` bindings, pip `obstore`): `obstore.put` from the same thread pool (the GIL
  is released during the request), and `obstore-async`: `put_async` gathered on one loop.

For each: PUTs/s, and the CPU milliseconds per PUT of the client's process (user + system, all threads) —
the figure that matters on a CPU worker, where every millisecond spent in the client is one the forward pass
and the PNG encoder do not get — plus SeaweedFS's CPU per PUT in the same window. `--burn` runs that many
pure-Python threads in the client process meanwhile (a stand-in for the encode threads that share its GIL).

The clients that are not importable are reported as such. aiobotocore pins its own botocore, so it is
installed apart (`pip install --target DIR aiobotocore`) and put on its process's path with
`--aiobotocore-path`; `--extra-path` does the same for `obstore` / `awscrt` when they are not in the venv.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CLIENTS = ("boto3-threads", "boto3-crt", "aiobotocore", "obstore", "obstore-async")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (all its threads) so far; 0 once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


# ---- in the child process: one client, `count` PUTs ----


def _payloads(count: int, size: int) -> list[bytes]:
    # Distinct bytes per object (a server may deduplicate identical bodies); incompressible like PNG data.
    return [os.urandom(size) for _ in range(count)]


def _boto3_threads(endpoint: str, bucket: str, keys: list[str], bodies: list[bytes], threads: int) -> None:
    from db.storage.s3 import make_s3_client

    client = make_s3_client(endpoint)
    client.put_object(Bucket=bucket, Key=keys[0], Body=bodies[0])  # connect before the clock starts
    with ThreadPoolExecutor(max_workers=threads) as pool:
        _timed(
            lambda: list(
                pool.map(
                    lambda kb: client.put_object(Bucket=bucket, Key=kb[0], Body=kb[1]),
                    zip(keys, bodies, strict=True),
                )
            )
        )


def _boto3_crt(endpoint: str, bucket: str, keys: list[str], bodies: list[bytes], threads: int) -> None:
    # boto3's own CRT path (boto3.crt.create_crt_transfer_manager) hard-codes use_ssl=True and
    # endpoint_url=None: it always talks to AWS, never to SeaweedFS/MinIO. So the same parts are built here
    # by hand, with the endpoint: the CRT S3 client over plain HTTP and botocore's request serializer.
    import io

    import botocore.session
    from botocore.config import Config
    from s3transfer.crt import (
        BotocoreCRTCredentialsWrapper,
        BotocoreCRTRequestSerializer,
        CRTTransferManager,
        create_s3_crt_client,
    )

    session = botocore.session.get_session()
    region = os.environ.get("AWS_REGION", "us-east-1")
    credentials = BotocoreCRTCredentialsWrapper(session.get_credentials()).to_crt_credentials_provider()
    crt_client = create_s3_crt_client(region=region, crt_credentials_provider=credentials, use_ssl=False)
    serializer = BotocoreCRTRequestSerializer(
        session,
        {"region_name": region, "endpoint_url": endpoint, "config": Config(s3={"addressing_style": "path"})},
    )
    manager = CRTTransferManager(crt_client, serializer)
    manager.upload(io.BytesIO(bodies[0]), bucket, keys[0]).result()

    def run() -> None:
        futures = [
            manager.upload(io.BytesIO(body), bucket, key) for key, body in zip(keys, bodies, strict=True)
        ]
        for future in futures:
            future.result()

    _timed(run)
    manager.shutdown()


def _aiobotocore(endpoint: str, bucket: str, keys: list[str], bodies: list[bytes], threads: int) -> None:
    from aiobotocore.session import get_session
    from botocore.config import Config

    async def main() -> None:
        config = Config(
            max_pool_connections=threads, s3={"addressing_style": "path"}, signature_version="s3v4"
        )
        async with get_session().create_client("s3", endpoint_url=endpoint, config=config) as client:
            await client.put_object(Bucket=bucket, Key=keys[0], Body=bodies[0])
            gate = asyncio.Semaphore(threads)

            async def put(key: str, body: bytes) -> None:
                async with gate:
                    await client.put_object(Bucket=bucket, Key=key, Body=body)

            started = time.perf_counter()
            cpu = time.process_time()
            await asyncio.gather(*(put(k, b) for k, b in zip(keys, bodies, strict=True)))
            _report(time.perf_counter() - started, time.process_time() - cpu)

    asyncio.run(main())


def _obstore_store(endpoint: str, bucket: str) -> Any:
    from obstore.store import S3Store

    return S3Store(
        bucket,
        endpoint=endpoint,
        region=os.environ.get("AWS_REGION", "us-east-1"),
        access_key_id=os.environ["AWS_ACCESS_KEY_ID"],
        secret_access_key=os.environ["AWS_SECRET_ACCESS_KEY"],
        virtual_hosted_style_request=False,
        client_options={"allow_http": True},
    )


def _obstore(endpoint: str, bucket: str, keys: list[str], bodies: list[bytes], threads: int) -> None:
    import obstore

    store = _obstore_store(endpoint, bucket)
    obstore.put(store, keys[0], bodies[0])
    with ThreadPoolExecutor(max_workers=threads) as pool:
        _timed(
            lambda: list(
                pool.map(lambda kb: obstore.put(store, kb[0], kb[1]), zip(keys, bodies, strict=True))
            )
        )


def _obstore_async(endpoint: str, bucket: str, keys: list[str], bodies: list[bytes], threads: int) -> None:
    import obstore

    store = _obstore_store(endpoint, bucket)

    async def main() -> None:
        await obstore.put_async(store, keys[0], bodies[0])
        gate = asyncio.Semaphore(threads)

        async def put(key: str, body: bytes) -> None:
            async with gate:
                await obstore.put_async(store, key, body)

        started = time.perf_counter()
        cpu = time.process_time()
        await asyncio.gather(*(put(k, b) for k, b in zip(keys, bodies, strict=True)))
        _report(time.perf_counter() - started, time.process_time() - cpu)

    asyncio.run(main())


def _timed(work: Callable[[], object]) -> None:
    started = time.perf_counter()
    cpu = time.process_time()  # every thread of this process, native ones (CRT, tokio) included
    work()
    _report(time.perf_counter() - started, time.process_time() - cpu)


def _report(seconds: float, cpu_seconds: float) -> None:
    # The wall-clock window too, so that several processes' windows can be merged into one rate.
    ended = time.time()
    print(
        json.dumps(
            {"seconds": seconds, "cpu_seconds": cpu_seconds, "started": ended - seconds, "ended": ended}
        ),
        flush=True,
    )


RUNNERS: dict[str, Callable[[str, str, list[str], list[bytes], int], None]] = {
    "boto3-threads": _boto3_threads,
    "boto3-crt": _boto3_crt,
    "aiobotocore": _aiobotocore,
    "obstore": _obstore,
    "obstore-async": _obstore_async,
}


def _burn(stop: threading.Event) -> None:
    # Pure-Python work holding the GIL in slices, like the encode threads' Python side.
    while not stop.is_set():
        sum(i * i for i in range(2000))


def child(args: argparse.Namespace) -> None:
    """Run one client's PUTs and print one JSON line (seconds, CPU seconds of this process)."""
    keys = [f"upload-bench/{args.child}/{uuid.uuid4().hex[:8]}/{i:08d}.png" for i in range(args.count)]
    bodies = _payloads(args.count, args.size)
    stop = threading.Event()
    burners = [threading.Thread(target=_burn, args=(stop,), daemon=True) for _ in range(args.burn)]
    for burner in burners:
        burner.start()
    try:
        if args.start_at:  # several processes of one measurement start together (payloads already built)
            time.sleep(max(0.0, args.start_at - time.time()))
        RUNNERS[args.child](args.endpoint, args.bucket, keys, bodies, args.threads)
    finally:
        stop.set()


# ---- in the parent: the server, one child per client, the table ----


def run_client(
    name: str,
    args: argparse.Namespace,
    endpoint: str,
    env: dict[str, str],
    server_pid: int | None,
    processes: int = 1,
) -> dict[str, Any]:
    """One client in `processes` processes of its own at once (`args.threads` in flight in each, `args.count`
    PUTs in all); PUTs/s over the merged window, client CPU ms/PUT and server CPU ms/PUT."""
    paths = [str(ROOT)]
    if name == "aiobotocore" and args.aiobotocore_path:
        paths.insert(0, args.aiobotocore_path)
    if args.extra_path:
        paths.append(args.extra_path)
    child_env = {**env, "PYTHONPATH": os.pathsep.join(paths)}
    per_process = max(1, args.count // processes)
    # Every process builds its payloads and imports its client first, then they start together.
    start_at = time.time() + 3.0 + 0.5 * processes
    command = [sys.executable, __file__, "--child", name, "--endpoint", endpoint, "--bucket", args.bucket]
    command += ["--count", str(per_process), "--size", str(args.size), "--threads", str(args.threads)]
    command += ["--burn", str(args.burn), "--start-at", repr(start_at)]
    server_before = _cpu_seconds(server_pid) if server_pid else 0.0
    children = [
        subprocess.Popen(command, env=child_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(processes)
    ]
    outputs = [child.communicate(timeout=1800) for child in children]
    server_cpu = (_cpu_seconds(server_pid) - server_before) if server_pid else 0.0
    reports: list[dict[str, float]] = []
    for child, (stdout, stderr) in zip(children, outputs, strict=True):
        lines = [line for line in stdout.splitlines() if line.startswith("{")]
        if child.returncode != 0 or not lines:
            reason = (stderr.strip().splitlines() or ["no output"])[-1]
            return {"client": name, "processes": processes, "error": reason[:200]}
        reports.append(json.loads(lines[-1]))
    total = per_process * processes
    window = max(r["ended"] for r in reports) - min(r["started"] for r in reports)
    return {
        "client": name,
        "processes": processes,
        "in_flight": processes * args.threads,
        "puts_per_s": total / window,
        "client_cpu_ms_per_put": 1000 * sum(r["cpu_seconds"] for r in reports) / total,
        # The whole children's window (start-up included) for the server: an upper bound, same for every client.
        "server_cpu_ms_per_put": 1000 * server_cpu / total,
    }


def main() -> None:
    """Parse the flags, start SeaweedFS unless --endpoint, run every client, print the table and JSON."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--count", type=int, default=4000, help="PUTs per client.")
    parser.add_argument(
        "--size", type=int, default=2600, help="Bytes per object (a 32x32 PNG with provenance)."
    )
    parser.add_argument(
        "--threads", type=int, default=8, help="Requests in flight (the worker's upload pool)."
    )
    parser.add_argument("--burn", type=int, default=0, help="Pure-Python threads burning the client's GIL.")
    parser.add_argument(
        "--processes",
        type=int,
        default=1,
        help="Processes per client, started together, --count PUTs in all (the worker's --concurrency).",
    )
    parser.add_argument("--clients", default=",".join(CLIENTS), help=f"Comma-separated subset of {CLIENTS}.")
    parser.add_argument("--rounds", type=int, default=2, help="Rounds over the clients (interleaved).")
    parser.add_argument("--endpoint", default=None, help="An S3 endpoint to use instead of a new SeaweedFS.")
    parser.add_argument("--bucket", default="catalogan-test")
    parser.add_argument("--extra-path", default=None, help="A folder with obstore / awscrt (pip --target).")
    parser.add_argument(
        "--aiobotocore-path", default=None, help="A folder with aiobotocore and its botocore."
    )
    parser.add_argument("--child", choices=CLIENTS, help=argparse.SUPPRESS)
    parser.add_argument("--start-at", type=float, default=0.0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    seaweed = None
    server_pid: int | None = None
    env = dict(os.environ)
    if args.endpoint is None:
        from tests.services import SeaweedFS

        seaweed = SeaweedFS(Path(tempfile.mkdtemp(prefix="catalogan-upload-bench-")))
        seaweed.start()
        assert seaweed.process is not None
        server_pid = seaweed.process.pid
        env.update(seaweed.env())
        endpoint = seaweed.endpoint_url
    else:
        endpoint = args.endpoint
    rows: list[dict[str, Any]] = []
    try:
        for round_number in range(args.rounds):
            for name in args.clients.split(","):
                row = run_client(name, args, endpoint, env, server_pid, processes=args.processes)
                row["round"] = round_number
                rows.append(row)
                print(json.dumps(row), flush=True)
    finally:
        if seaweed is not None:
            seaweed.stop()
    print(
        f"\n{args.count} PUTs of {args.size} bytes, {args.processes} process(es) of {args.threads} in flight, "
        f"{args.burn} GIL burners, "
        f"{args.rounds} rounds, best round per client:"
    )
    print(
        f"{'client':<15} {'PUTs/s':>8} {'client CPU ms/PUT':>18} {'server CPU ms/PUT':>18}  vs boto3-threads"
    )
    best: dict[str, dict[str, Any]] = {}
    for row in rows:
        if "error" in row:
            best.setdefault(row["client"], row)
        elif (
            "puts_per_s" not in best.get(row["client"], {})
            or row["puts_per_s"] > best[row["client"]]["puts_per_s"]
        ):
            best[row["client"]] = row
    base = best.get("boto3-threads", {}).get("puts_per_s")
    for name, row in best.items():
        if "error" in row:
            print(f"{name:<15} not measured: {row['error']}")
            continue
        ratio = f"{row['puts_per_s'] / base:.2f}x" if base else "-"
        print(
            f"{name:<15} {row['puts_per_s']:>8.0f} {row['client_cpu_ms_per_put']:>18.3f} "
            f"{row['server_cpu_ms_per_put']:>18.3f}  {ratio}"
        )
    print(json.dumps({"args": {k: v for k, v in vars(args).items() if k != "child"}, "rows": rows}))


if __name__ == "__main__":
    main()
