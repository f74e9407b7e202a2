"""Where a Ray Train run's CPU goes: CPU seconds per process and per thread over a window of training.

    .venv/bin/python bench/ray_cpu_by_thread.py --preset tiny --window 30

Starts a local Ray cluster, runs `models.training.fit_with_ray` with 1 worker in a background thread, waits
until the `RayTrainWorker` process exists and `--settle` seconds more (start-up, data loading), then reads
every thread's user + system time from `/proc/<pid>/task/<tid>/stat` at the start and end of `--window`
seconds. It prints the CPU seconds of each Ray process and of the busiest threads. The training thread is
the worker's busiest one. Everything else is what Ray itself costs while training runs: the rest of the worker
process, and the cluster's own processes (GCS, raylet, the Train controller and its helper actors).
Linux only (reads /proc). Use it next to `bench/bench_train.py`, which measures the same cost as a step rate.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")
TRAIN_WORKER_TITLE = "RayTrainWorker"

ThreadTimes = dict[int, tuple[str, float]]  # tid -> (thread name, CPU seconds)


def ray_processes() -> dict[int, str]:
    """pid -> command line (first 90 characters) of every process whose command line mentions Ray."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            command = (
                Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            )
        except OSError:
            continue
        if "ray" in command.lower():
            found[int(entry)] = command.strip()[:90]
    return found


def thread_times(pid: int) -> ThreadTimes:
    """CPU seconds (user + system) of each thread of `pid`; empty when the process is gone."""
    times: ThreadTimes = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return times
    for tid in tids:
        try:
            stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
            name = Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()  # after "pid (comm)": state is field 3, utime 14, stime 15
        times[int(tid)] = (name, (int(fields[11]) + int(fields[12])) / TICKS_PER_SECOND)
    return times


def main() -> None:
    """Run the training, sample the threads over the window, print processes and threads by CPU seconds."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="tiny")
    parser.add_argument(
        "--data", default="fashion-mnist", help="a data spec, as for `catalogan train --data`"
    )
    parser.add_argument(
        "--steps", type=int, default=100_000, help="more than the window needs (the run is cut)"
    )
    parser.add_argument("--window", type=float, default=30.0, help="seconds of training measured")
    parser.add_argument(
        "--settle", type=float, default=15.0, help="seconds after the worker starts, unmeasured"
    )
    parser.add_argument("--threads", type=int, default=20, help="threads listed")
    args = parser.parse_args()

    import ray

    from models.training import TrainRequest, fit_with_ray

    scratch = Path(tempfile.mkdtemp(prefix="catalogan-ray-cpu-"))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    request = TrainRequest(
        preset=args.preset,
        data=args.data,
        steps=args.steps,
        out_url=f"file://{scratch}/out",
        name="probe",
        run="probe",
        workers=1,
        checkpoint_every=args.steps,
    )
    threading.Thread(target=fit_with_ray, args=(request, scratch / "ray"), daemon=True).start()
    deadline = time.monotonic() + 300
    while not any(TRAIN_WORKER_TITLE in command for command in ray_processes().values()):
        if time.monotonic() > deadline:
            raise SystemExit("no RayTrainWorker process after 300 s")
        time.sleep(0.5)
    time.sleep(args.settle)
    commands = ray_processes()
    commands[os.getpid()] = "this script (the driver)"
    before = {pid: thread_times(pid) for pid in commands}
    time.sleep(args.window)
    after = {pid: thread_times(pid) for pid in commands}

    rows = []  # (CPU seconds in the window, pid, tid, thread name)
    for pid, threads in after.items():
        for tid, (name, seconds) in threads.items():
            rows.append((seconds - before[pid].get(tid, (name, 0.0))[1], pid, tid, name))
    by_process: dict[int, float] = {}
    for seconds, pid, _tid, _name in rows:
        by_process[pid] = by_process.get(pid, 0.0) + seconds
    worker_pid = next(pid for pid, command in commands.items() if TRAIN_WORKER_TITLE in command)
    train_thread = max((row for row in rows if row[1] == worker_pid), key=lambda row: row[0])
    total = sum(by_process.values())
    print(f"preset {args.preset}, window {args.window:.0f} s: CPU seconds by process")
    for pid, seconds in sorted(by_process.items(), key=lambda item: -item[1]):
        if seconds >= 0.01:
            print(f"  {seconds:7.2f}  {pid:>7}  {commands[pid]}")
    print(f"busiest {args.threads} threads")
    for seconds, pid, tid, name in sorted(rows, reverse=True)[: args.threads]:
        print(f"  {seconds:7.2f}  {pid:>7}/{tid:<7}  {name}")
    rest_of_worker = by_process[worker_pid] - train_thread[0]
    print(
        f"training thread {train_thread[0]:.2f} CPU s ({train_thread[0] / args.window:.0%} of a core); "
        f"rest of the worker process {rest_of_worker:.2f} ({rest_of_worker / train_thread[0]:.1%} of training); "
        f"every other Ray process {total - by_process[worker_pid]:.2f} "
        f"({(total - by_process[worker_pid]) / train_thread[0]:.1%} of training)"
    )
    sys.stdout.flush()
    ray.shutdown()  # stops the cluster, and with it the training
    os._exit(0)  # the driver's fit() thread is still waiting: leave without joining it


if __name__ == "__main__":
    main()
