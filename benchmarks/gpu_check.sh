#!/bin/sh
# The ready GPU check: one run on a CUDA machine that answers "does hybridssl work and how fast is it here".
#   sh benchmarks/gpu_check.sh [OUT_DIR]            (default OUT_DIR: runs/gpu-check)
# On a bare machine without network whose Python lacks kornia and pydantic:
# `. benchmarks/archive/device_env.sh && sh benchmarks/gpu_check.sh`, with .device-bundle copied there
# (benchmarks/archive/device_bundle.sh makes it on a machine with network).
# Steps: (a) nvidia-smi, torch/CUDA versions and the measured bf16 matmul peak; (b) `pytest -m cuda`
# (exit 5, "no tests ran", is fine); (c) the training step of every method at vit-base/16, 224 px,
# batch 128, bf16 (img/s, MFU against the measured peak, peak memory); (d) a 4096-JPEG photo folder
# and a 224 px vit-base/16 MAE run through the streaming loader (img/s, data wait %);
# (e) OUT_DIR/gpu_check.json (everything) and OUT_DIR/gpu_check.md (the tables).
# The bench goes through benchmarks/gpu_check.py, which calls hybridssl.engine.bench.bench (the step of
# `hybridssl bench`), which measures the matmul peak again in every call; here the peak is measured once
# and every MFU is against it.
# Expected duration on an H100/H200: about 4-5 minutes (versions + peak ~15 s, CUDA tests capped at
# GPU_CHECK_TEST_TIMEOUT=180 s, bench ~15 s per method = ~2.5 min, photos ~10 s, MAE run ~1 min).
# A failing method or step is recorded in its row and the script goes on; it exits 1 at the end when
# anything failed (the tables are written either way).
#
# GPU_CHECK_TOY=1: the same steps at toy sizes on the CPU (vit-pico/8, 32 px, 1+1 steps, 64 images,
# no CUDA tests), about a minute on 2 cores; tests/test_gpu_check.py runs it so the script cannot rot.
# Knobs (environment): GPU_CHECK_METHODS (comma list; default: every registered method),
# GPU_CHECK_MODEL, GPU_CHECK_PATCH, GPU_CHECK_IMAGE_SIZE, GPU_CHECK_BATCH, GPU_CHECK_STEPS,
# GPU_CHECK_WARMUP, GPU_CHECK_IMAGES, GPU_CHECK_TRAIN_BATCH, GPU_CHECK_TRAIN_STEPS, GPU_CHECK_WORKERS,
# GPU_CHECK_TEST_TIMEOUT, GPU_CHECK_SKIP_TESTS=1, PYTHON (default .venv/bin/python), HYBRIDSSL.
set -eu
OUT=${1:-runs/gpu-check}
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(dirname "$HERE")
if [ -z "${PYTHON:-}" ]; then
    if [ -x "$ROOT/.venv/bin/python" ]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON=python3; fi
fi
HYBRIDSSL=${HYBRIDSSL:-"$PYTHON -m hybridssl"}
HELPER="$PYTHON $HERE/gpu_check.py"
NPROC=$(nproc 2>/dev/null || getconf _NPROCESSORS_ONLN 2>/dev/null || echo 2)
TOY=${GPU_CHECK_TOY:-0}

if [ "$TOY" = 1 ]; then
    DEVICE=cpu; ACCEL=cpu; MODEL=vit-pico; PATCH=8; SIZE=32; BATCH=8; STEPS=1; WARMUP=1
    IMAGES=64; PHOTO_SIZES=40,64; TRAIN_BATCH=8; TRAIN_STEPS=4; WORKERS=1; PHOTO_JOBS=1
else
    DEVICE=cuda; ACCEL=gpu; MODEL=vit-base; PATCH=16; SIZE=224; BATCH=128; STEPS=10; WARMUP=3
    IMAGES=4096; PHOTO_SIZES=300,500; TRAIN_BATCH=128; TRAIN_STEPS=80
    WORKERS=$((NPROC < 16 ? NPROC : 16)); PHOTO_JOBS=$WORKERS
fi
MODEL=${GPU_CHECK_MODEL:-$MODEL}; PATCH=${GPU_CHECK_PATCH:-$PATCH}; SIZE=${GPU_CHECK_IMAGE_SIZE:-$SIZE}
BATCH=${GPU_CHECK_BATCH:-$BATCH}; STEPS=${GPU_CHECK_STEPS:-$STEPS}; WARMUP=${GPU_CHECK_WARMUP:-$WARMUP}
IMAGES=${GPU_CHECK_IMAGES:-$IMAGES}; TRAIN_BATCH=${GPU_CHECK_TRAIN_BATCH:-$TRAIN_BATCH}
TRAIN_STEPS=${GPU_CHECK_TRAIN_STEPS:-$TRAIN_STEPS}; WORKERS=${GPU_CHECK_WORKERS:-$WORKERS}

mkdir -p "$OUT/logs"
rm -f "$OUT/bench.jsonl" "$OUT/gpu_check.json" "$OUT/gpu_check.md"
START=$(date +%s)
step() { echo; echo "== [$(date -u +%H:%M:%S)] $*"; }

step "(a) machine and versions (toy=$TOY, device=$DEVICE, out=$OUT)"
if command -v nvidia-smi >/dev/null 2>&1; then nvidia-smi || true; else echo "nvidia-smi: not found"; fi
if [ "$TOY" = 1 ]; then TOYFLAG=--toy; else TOYFLAG=; fi
$HELPER info --device "$DEVICE" $TOYFLAG --out "$OUT/info.json" --methods-out "$OUT/methods.txt"
# every registered method; multi-stage recipes (mae-ct, mae-ct-aug) through their stages mae-ct-head, mae-ct-tune
METHODS=${GPU_CHECK_METHODS:-$(cat "$OUT/methods.txt")}

TEST_RC=""
if [ "$TOY" = 1 ] || [ "${GPU_CHECK_SKIP_TESTS:-0}" = 1 ]; then
    step "(b) CUDA-marked tests: skipped"
else
    step "(b) CUDA-marked tests: pytest -m cuda (capped at ${GPU_CHECK_TEST_TIMEOUT:-180} s)"
    TIMEOUT=""; command -v timeout >/dev/null 2>&1 && TIMEOUT="timeout ${GPU_CHECK_TEST_TIMEOUT:-180}"
    set +e
    (cd "$ROOT" && $TIMEOUT $PYTHON -m pytest -m cuda -q -rfE -p no:cacheprovider) >"$OUT/logs/cuda_tests.log" 2>&1
    TEST_RC=$?
    set -e
    tail -n 15 "$OUT/logs/cuda_tests.log"
    case $TEST_RC in
        0) echo "CUDA tests passed" ;;
        5) echo "no CUDA-marked tests (pytest exit 5): fine" ;;
        *) echo "CUDA tests FAILED (exit $TEST_RC; log $OUT/logs/cuda_tests.log); going on" ;;
    esac
fi

step "(c) bench: $METHODS at $MODEL/$PATCH, $SIZE px, batch $BATCH, $WARMUP+$STEPS steps on $DEVICE"
# one process per method on the GPU (a crash or OOM cannot spoil the next row); one for all in toy mode
if [ "$TOY" = 1 ]; then GROUPS_=$METHODS; else GROUPS_=$(echo "$METHODS" | tr , ' '); fi
for group in $GROUPS_; do
    log="$OUT/logs/bench-$(echo "$group" | tr , _ | cut -c1-60).log"
    set +e
    $HELPER bench --methods "$group" --model "$MODEL" --patch-size "$PATCH" --image-size "$SIZE" \
        --batch-size "$BATCH" --steps "$STEPS" --warmup "$WARMUP" --device "$DEVICE" \
        --peak-from "$OUT/info.json" --jsonl "$OUT/bench.jsonl" 2>"$log"
    rc=$?
    set -e
    [ $rc = 0 ] || { echo "bench process for $group exited with $rc; last lines of $log:"; tail -n 5 "$log"; }
done

step "(d) streaming MAE: $IMAGES JPEGs, $MODEL/$PATCH at $SIZE px, batch $TRAIN_BATCH, $TRAIN_STEPS steps, $WORKERS workers"
$HELPER photos --root "$OUT/photos" --num-images "$IMAGES" --sizes "$PHOTO_SIZES" --jobs "$PHOTO_JOBS"
rm -rf "$OUT/mae-stream"
T0=$(date +%s)
set +e
$HYBRIDSSL pretrain --method mae --dataset folder --data-dir "$OUT/photos" --image-size "$SIZE" --patch-size "$PATCH" \
    --model "$MODEL" --batch-size "$TRAIN_BATCH" --max-steps "$TRAIN_STEPS" --loader stream --num-workers "$WORKERS" \
    --accelerator "$ACCEL" --devices 1 --output "$OUT/mae-stream" --no-progress-bar --set log_every_n_steps=1 \
    >"$OUT/logs/mae-stream.log" 2>&1
TRAIN_RC=$?
set -e
TRAIN_WALL=$(( $(date +%s) - T0 ))
tail -n 3 "$OUT/logs/mae-stream.log"
[ $TRAIN_RC = 0 ] || echo "streaming run exited with $TRAIN_RC (log $OUT/logs/mae-stream.log); going on"
rm -rf "$OUT/mae-stream/checkpoints"  # the weights are not needed, only logs/csv/metrics.csv

step "(e) report"
set +e
$HELPER report --out "$OUT" --methods "$METHODS" \
    --set toy="$TOY" --set device="$DEVICE" --set model="$MODEL" --set patch_size="$PATCH" --set image_size="$SIZE" \
    --set batch_size="$BATCH" --set steps="$STEPS" --set warmup="$WARMUP" --set photo_sizes="$PHOTO_SIZES" \
    --set train_model="$MODEL" --set train_patch_size="$PATCH" --set train_image_size="$SIZE" \
    --set train_batch_size="$TRAIN_BATCH" --set train_steps="$TRAIN_STEPS" --set train_workers="$WORKERS" \
    --set train_images="$IMAGES" --set train_exit_code="$TRAIN_RC" --set train_wall_seconds="$TRAIN_WALL" \
    --set cuda_tests_exit_code="$TEST_RC" --set total_seconds="$(( $(date +%s) - START ))"
rc=$?
set -e
echo "gpu check done in $(( $(date +%s) - START )) s (exit $rc)"
exit $rc
