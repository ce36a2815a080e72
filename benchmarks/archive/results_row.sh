#!/bin/sh
# One method's row of "Results at real budgets" (BENCHMARKS.md): pretraining with the method's recipe
# for small images (configs/METHOD/fashion-mnist.yaml) on all 60k Fashion-MNIST images for EPOCHS
# epochs, then the flagship's protocols on the test split, into OUT/rows/METHOD (benchmarks/archive/flagship_table.py
# prints the row).
# mae-ct / mae-ct-aug rows are stages 2-3 on the MAE row (OUT/rows/mae, run it first): HEAD_EPOCHS
# (default 1) + TUNE_EPOCHS (default 8) epochs; EPOCHS is then ignored.
# Long (CMAE ~2 h, MoCo v3 ~3 h at 24 epochs on a 2-core CPU): run it in the background; resumable across
# sessions (run it again with the same arguments and it continues where it stopped).
#   sh benchmarks/archive/results_row.sh METHOD [OUT] [EPOCHS]
# PRETRAIN_FLAGS / EVAL_FLAGS (default none) are added to the commands, e.g. for a smoke test.
# ROW (default METHOD) names the row's folder, for a second row of one method, e.g.
#   ROW=mae-ct-tune24 TUNE_EPOCHS=24 sh benchmarks/archive/results_row.sh mae-ct runs/flagship
# MAE_ROW (default mae) names the row whose last checkpoint mae-ct / mae-ct-aug start from, e.g. the tuned
# MAE of ROW=mae-tuned: MAE_ROW=mae-tuned ROW=mae-ct-aug-tuned sh benchmarks/archive/results_row.sh mae-ct-aug OUT
set -eu
METHOD=${1:?usage: sh benchmarks/archive/results_row.sh METHOD [OUT] [EPOCHS]}
OUT=${2:-runs/flagship}
EPOCHS=${3:-24}
HYBRIDSSL=${HYBRIDSSL:-hybridssl}
PRETRAIN_FLAGS=${PRETRAIN_FLAGS:-}
ROW="$OUT/rows/${ROW:-$METHOD}"
LOG="$ROW/log.txt"
CONFIG="$(dirname "$0")/../../configs/$METHOD/fashion-mnist.yaml"
mkdir -p "$ROW"
. "$(dirname "$0")/protocols.sh"

case $METHOD in
mae-ct*)
    START="$OUT/rows/${MAE_ROW:-mae}/checkpoints/last.ckpt"
    [ -f "$START" ] || { echo "$METHOD: no MAE row to start from ($START): run ROW=${MAE_ROW:-mae} results_row.sh mae first" >&2; exit 2; }
    HEAD=${HEAD_EPOCHS:-1}
    TUNE=${TUNE_EPOCHS:-8}
    stamp "$METHOD head $HEAD + tune $TUNE epochs from $START"
    # each stage checkpoints every epoch, the newest two kept (as below)
    $HYBRIDSSL pretrain --config "$CONFIG" --init-from "$START" --set method_args.head_epochs="$HEAD" \
        --set method_args.tune_epochs="$TUNE" --checkpoint-every-epochs 1 --keep-checkpoints 2 --no-progress-bar \
        --output "$ROW" --resume $PRETRAIN_FLAGS
    evaluate "$ROW/stage3-tune/checkpoints/last.ckpt" "$ROW" ""
    ;;
*)
    stamp "$METHOD $EPOCHS epochs"
    # a checkpoint every epoch (a session's end loses at most one), the newest two kept
    $HYBRIDSSL pretrain --config "$CONFIG" --epochs "$EPOCHS" --checkpoint-every-epochs 1 --keep-checkpoints 2 --no-progress-bar \
        --output "$ROW" --resume $PRETRAIN_FLAGS
    evaluate "$ROW/checkpoints/last.ckpt" "$ROW" ""
    ;;
esac
stamp "$METHOD done"
