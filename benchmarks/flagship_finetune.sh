#!/bin/sh
# The fine-tune column of the flagship rows (BENCHMARKS.md, results at real budgets): the MAE, the
# MAE-CT tuned from it and the same ViT at random init (supervised from scratch), each fine-tuned end to
# end on all 60k labelled images for EPOCHS epochs (the protocol's other settings at their defaults).
#   sh benchmarks/flagship_finetune.sh [FLAGSHIP_OUT] [EPOCHS]
set -eu
OUT=${1:-runs/flagship}
EPOCHS=${2:-3}
HYBRIDSSL=${HYBRIDSSL:-hybridssl}
stamp() { echo "[$(date -u +%FT%TZ)] $*" | tee -a "$OUT/log.txt"; }
MAE="$OUT/mae/checkpoints/last.ckpt"
CT="$OUT/mae-ct/stage3-tune/checkpoints/last.ckpt"
stamp "finetune $EPOCHS epochs ($MAE)"
$HYBRIDSSL evaluate --checkpoint "$MAE" --protocol finetune --epochs "$EPOCHS" --output "$OUT/mae"
stamp "finetune $EPOCHS epochs ($CT)"
$HYBRIDSSL evaluate --checkpoint "$CT" --protocol finetune --epochs "$EPOCHS" --output "$OUT/mae-ct"
stamp "finetune $EPOCHS epochs --random-init ($MAE)"
$HYBRIDSSL evaluate --checkpoint "$MAE" --protocol finetune --epochs "$EPOCHS" --random-init --output "$OUT/floors"
stamp "finetune done"
