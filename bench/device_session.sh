#!/usr/bin/env bash
# The prepared work for a lent GPU (issues 11, 15 and 19), as two device calls. Each fits one session's 15
# minutes of device time with the machine's start (~2 min); both together do not. Run `bench` first (it
# decides issues 11 and 19), and `train` in the next session that has a device:
#
#   bash bench/device_session.sh bench   # ~7 min: gpu_bench section 1 for a minute (the plain and the folded
#                                        # graph's forward), then sections 0, 3, 4 and 5 (the worker in-process
#                                        # with the gate on the GPU, chunk sizes, the Ray Data peer's actor
#                                        # beside it; training steps/s with cudnn.benchmark off and on; then
#                                        # 1, 2, 4 and 8 worker processes sharing the GPU)
#   bash bench/device_session.sh train   # TRAIN_S (default 500 s, ~22,000 steps, in one 600-s call):
#                                        # fashion-cgan from scratch at batch 128 (the issue-15 candidate
#                                        # recipe run longer) and at batch 256, as two processes on the one
#                                        # GPU (VARIANTS= to change); carry .devcarry
#   INIT=.devcarry/b128-trainable.pt bash bench/device_session.sh train
#                                        # the same, going on from an earlier call's G, G_ema and D (join
#                                        # its parts first, see below; copy it into .devcarry)
#
# Before `train`, on the CPU box: mkdir -p .devcarry/fashion-mnist && cp /usr/share/datasets/fashion-mnist/*.gz
# .devcarry/fashion-mnist/ and pass carry [".devcarry"]. Everything lands under $OUT (set by the device
# machine): graphs/gpu_bench.json, bench/gpu_bench.json, bench/gpu_worker_section.json, bench/gpu_worker_processes.json,
# train/variants.json, train/b128-trainable.pt.part-0 and -1, train/b256-trainable.pt.part-0 and -1, and a
# log per part (6 files, about 47 MiB: the machine brings back at most 8 files and 64 MiB). On the CPU box,
# join each trainable checkpoint (which also writes its generator), then score the generator:
#   .venv/bin/python bench/train_variants_gpu.py --join OUT/train/b128-trainable.pt
#   catalogan evaluate OUT/train/b128-generator.pt --samples 1000 --json --out eval.json
# On the CPU box, PYTHON=.venv/bin/python runs the same calls (slowly: no GPU). Nothing here is a dependency
# of CI; `tests/workers/test_gpu_bench_worker_section.py` runs sections 3 and 5 on the CPU (section 3 with
# only what the device image has).
set -uo pipefail
part=${1:?usage: device_session.sh bench|train}
out=${OUT:?OUT is set by the device machine}
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}  # the device image's Python has torch; here: PYTHON=.venv/bin/python
if command -v nvidia-smi > /dev/null; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
fi

case "$part" in
  bench)
    mkdir -p "$out/bench" "$out/graphs"
    # Section 1, capped at a minute: the plain and the folded graph's forward side by side (a CUDA worker
    # runs plain until this shows the fold faster on the GPU too; docs/generation.md, "The folded graph")
    "$python" bench/gpu_bench.py --out "$out/graphs" --sections 1 --budget-s "${GRAPHS_S:-60}" \
      2>&1 | tee "$out/graphs.log"
    "$python" bench/gpu_bench.py --out "$out/bench" --sections 0,3,4,5 --budget-s "${BENCH_S:-120}" \
      2>&1 | tee "$out/bench.log"
    ;;
  train)
    mkdir -p "$out/train"
    train_s=${TRAIN_S:-500}
    # 44.9 steps/s at batch 128 on an H200 with four variants sharing it (bench/candidates/README.md): 500 s ≈
    # 22,000 steps; each run stops at --train-s and keeps its latest checkpoint; --eval-s scores them with 200
    # images per category. No generator files: --join makes them, and two variants' would pass 8 files.
    variant_args=()
    for variant in ${VARIANTS:-b128:batch_size=128 b256:batch_size=256}; do
      variant_args+=(--variant "$variant")
    done
    "$python" bench/train_variants_gpu.py --data "${DATA:-fashion-mnist:.devcarry/fashion-mnist}" \
      "${variant_args[@]}" --steps "${STEPS:-30000}" --checkpoint-every 1000 --no-generator-files \
      --train-s "$train_s" --eval-s "${EVAL_S:-40}" --samples 200 --out "$out/train" \
      ${INIT:+--init "$INIT"} \
      2>&1 | tail -n 200 | tee "$out/train.log"
    ;;
  *)
    echo "device_session.sh: unknown part '$part' (bench | train)" >&2
    exit 2
    ;;
esac
