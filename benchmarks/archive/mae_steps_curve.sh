#!/bin/sh
# MAE's features against optimizer steps: k-NN and linear probe of the flagship MAE's intermediate
# checkpoints (one every 2 epochs of 234 steps) next to the same ViT at random init. What the budget hint
# of `hybridssl pretrain` (engine/train.py) is based on. Run after benchmarks/archive/flagship_mae_ct.sh:
#   sh benchmarks/archive/mae_steps_curve.sh [FLAGSHIP_OUT] [STEPS...]
# The checkpoints are points of one 24-epoch cosine schedule, not separate shorter runs: an early one
# was taken at a higher learning rate than a short run would end with.
set -eu
OUT=${1:-runs/flagship}
[ $# -gt 0 ] && shift
STEPS=${*:-"468 936 1872 5616"}
HYBRIDSSL=${HYBRIDSSL:-hybridssl}
LIMIT="--limit-train 20000"
for s in $STEPS; do
    ckpt=$(printf "%s/mae/checkpoints/step%07d.ckpt" "$OUT" "$s")
    for p in knn linear; do
        $HYBRIDSSL evaluate --checkpoint "$ckpt" --protocol "$p" $LIMIT --output "$OUT/curve"
    done
done
for p in knn linear; do
    $HYBRIDSSL evaluate --checkpoint "$ckpt" --protocol "$p" $LIMIT --random-init --output "$OUT/curve"
done
