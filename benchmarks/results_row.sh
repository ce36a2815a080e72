#!/bin/sh
# One method's row of "Results at real budgets" (BENCHMARKS.md): pretraining with the method's tuned
# recipe (configs/METHOD/fashion-mnist.yaml) on all 60k Fashion-MNIST images for EPOCHS epochs, then the
# flagship's protocols on the test split, into OUT/METHOD (benchmarks/flagship_table.py prints the row).
# Long (CMAE ~2 h, MoCo v3 ~3 h at 24 epochs on a 2-core CPU): run it in the background; resumable across
# sessions (run it again with the same arguments and it continues where it stopped).
#   sh benchmarks/results_row.sh METHOD [OUT] [EPOCHS]
# PRETRAIN_FLAGS / EVAL_FLAGS (default none) are added to the commands, e.g. for a smoke test.
set -eu
METHOD=$1
OUT=${2:-runs/flagship}
EPOCHS=${3:-24}
HYBRIDSSL=${HYBRIDSSL:-hybridssl}
PRETRAIN_FLAGS=${PRETRAIN_FLAGS:-}
mkdir -p "$OUT"
. "$(dirname "$0")/protocols.sh"

resume=""; [ -d "$OUT/$METHOD/checkpoints" ] && resume="--resume"
stamp "$METHOD $EPOCHS epochs"
$HYBRIDSSL pretrain --config "$(dirname "$0")/../configs/$METHOD/fashion-mnist.yaml" --epochs "$EPOCHS" \
    --checkpoint-every-epochs 2 --no-progress-bar --output "$OUT/$METHOD" $resume $PRETRAIN_FLAGS
[ -f "$OUT/$METHOD/results.jsonl" ] || evaluate "$OUT/$METHOD/checkpoints/last.ckpt" "$OUT/$METHOD" ""
stamp "$METHOD done"
