#!/bin/sh
# The fine-tune column of the flagship rows (BENCHMARKS.md, results at real budgets): the MAE, the
# MAE-CT tuned from it and the same ViT at random init (supervised from scratch), each fine-tuned end to
# end on all 60k labelled images for EPOCHS epochs (the protocol's other settings at their defaults).
# Resumable: an encoder whose fine-tune finished is not run again, and a killed fine-tune continues
# after its last finished epoch (evaluate keeps its state in the encoder's folder).
# Further arguments name rows of benchmarks/archive/results_row.sh (OUT/rows/NAME; an mae-ct row's stage 3) to
# fine-tune instead, e.g. the pair CMAE's claim is about: sh benchmarks/archive/flagship_finetune.sh runs/flagship 50 mae cmae;
# the name random-init fine-tunes the ViT of OUT/rows/mae untrained (supervised from scratch, into OUT/floors).
#   sh benchmarks/archive/flagship_finetune.sh [FLAGSHIP_OUT] [EPOCHS] [ROW ...]
set -eu
OUT=${1:-runs/flagship}
EPOCHS=${2:-3}
[ $# -ge 2 ] && shift 2 || shift $#
HYBRIDSSL=${HYBRIDSSL:-hybridssl}
. "$(dirname "$0")/protocols.sh"
if [ $# -gt 0 ]; then
    for ROW in "$@"; do
        case $ROW in
        random-init) measure "$OUT/rows/mae/checkpoints/last.ckpt" "$OUT/floors" finetune "--epochs $EPOCHS --random-init" ;;
        mae-ct*) measure "$OUT/rows/$ROW/stage3-tune/checkpoints/last.ckpt" "$OUT/rows/$ROW" finetune "--epochs $EPOCHS" ;;
        *) measure "$OUT/rows/$ROW/checkpoints/last.ckpt" "$OUT/rows/$ROW" finetune "--epochs $EPOCHS" ;;
        esac
    done
    stamp "finetune $* done"
    exit 0
fi
MAE="$OUT/mae/checkpoints/last.ckpt"
CT="$OUT/mae-ct/stage3-tune/checkpoints/last.ckpt"
measure "$MAE" "$OUT/mae" finetune "--epochs $EPOCHS"
measure "$CT" "$OUT/mae-ct" finetune "--epochs $EPOCHS"
measure "$MAE" "$OUT/floors" finetune "--epochs $EPOCHS --random-init"
stamp "finetune done"
