#!/bin/sh
# One method's row of "Results at real budgets" (BENCHMARKS.md): pretraining with the method's tuned
# recipe (configs/METHOD/fashion-mnist.yaml) on all 60k Fashion-MNIST images for EPOCHS epochs, then the
# flagship's protocols on the test split, into OUT/rows/METHOD (benchmarks/flagship_table.py prints the
# row). MAE-CT's rows come from benchmarks/flagship_mae_ct.sh (it tunes a given MAE).
# Long (CMAE ~2 h, MoCo v3 ~3 h at 24 epochs on a 2-core CPU): run it in the background; resumable across
# sessions (run it again with the same arguments and it continues where it stopped).
#   sh benchmarks/results_row.sh METHOD [OUT] [EPOCHS]
# PRETRAIN_FLAGS / EVAL_FLAGS (default none) are added to the commands, e.g. for a smoke test.
set -eu
METHOD=${1:?usage: sh benchmarks/results_row.sh METHOD [OUT] [EPOCHS]}
case $METHOD in mae-ct*) echo "$METHOD: use benchmarks/flagship_mae_ct.sh (it tunes a given MAE)" >&2; exit 2;; esac
OUT=${2:-runs/flagship}
EPOCHS=${3:-24}
HYBRIDSSL=${HYBRIDSSL:-hybridssl}
PRETRAIN_FLAGS=${PRETRAIN_FLAGS:-}
ROW="$OUT/rows/$METHOD"
LOG="$ROW/log.txt"
mkdir -p "$ROW"
. "$(dirname "$0")/protocols.sh"

stamp "$METHOD $EPOCHS epochs"
$HYBRIDSSL pretrain --config "$(dirname "$0")/../configs/$METHOD/fashion-mnist.yaml" --epochs "$EPOCHS" \
    --checkpoint-every-epochs 2 --no-progress-bar --output "$ROW" --resume $PRETRAIN_FLAGS
evaluate "$ROW/checkpoints/last.ckpt" "$ROW" ""
stamp "$METHOD done"
