#!/bin/sh
# The fine-tune column of the flagship rows (BENCHMARKS.md, results at real budgets): the MAE, the
# MAE-CT tuned from it and the same ViT at random init (supervised from scratch), each fine-tuned end to
# end on all 60k labelled images for EPOCHS epochs (the protocol's other settings at their defaults).
# Resumable: an encoder whose fine-tune finished is not run again.
#   sh benchmarks/flagship_finetune.sh [FLAGSHIP_OUT] [EPOCHS]
set -eu
OUT=${1:-runs/flagship}
EPOCHS=${2:-3}
HYBRIDSSL=${HYBRIDSSL:-hybridssl}
. "$(dirname "$0")/protocols.sh"
MAE="$OUT/mae/checkpoints/last.ckpt"
CT="$OUT/mae-ct/stage3-tune/checkpoints/last.ckpt"
measure "$MAE" "$OUT/mae" finetune "--epochs $EPOCHS"
measure "$CT" "$OUT/mae-ct" finetune "--epochs $EPOCHS"
measure "$MAE" "$OUT/floors" finetune "--epochs $EPOCHS --random-init"
stamp "finetune done"
