#!/bin/sh
# The flagship row of BENCHMARKS.md (results at real budgets): MAE on all 60k Fashion-MNIST images, then
# MAE-CT stages 2-3 on top of it, each evaluated with the same protocols next to the random-init ViT and
# raw pixels. Long (about 2 h on a 2-core CPU at 24 MAE epochs: MAE 59 min, the rest evaluations and tuning):
# run it in the background.
#   sh benchmarks/archive/flagship_mae_ct.sh [OUT] [MAE_EPOCHS] [HEAD_EPOCHS] [TUNE_EPOCHS]
# The MAE's weights (no optimizer state) are written to OUT/mae-release.ckpt: the demo's shipped start
# is this file (src/hybridssl/pretrained/mae-vit-pico-fashion-mnist.ckpt).
# Resumable: run it again with the same OUT and it continues where it stopped.
set -eu
OUT=${1:-runs/flagship}
EPOCHS=${2:-24}
HEAD=${3:-1}
TUNE=${4:-2}
HYBRIDSSL=${HYBRIDSSL:-hybridssl}
mkdir -p "$OUT"
. "$(dirname "$0")/protocols.sh"

stamp "MAE $EPOCHS epochs"
$HYBRIDSSL pretrain --method mae --dataset fashion-mnist --model vit-pico --epochs "$EPOCHS" --batch-size 256 \
    --checkpoint-every-epochs 2 --no-progress-bar --output "$OUT/mae" --resume
MAE="$OUT/mae/checkpoints/last.ckpt"
PYTHON=$(dirname "$(command -v "$HYBRIDSSL")")/python
"$PYTHON" -c "import sys; from hybridssl.weights.ours import release_checkpoint as r; r(sys.argv[1], sys.argv[2])" \
    "$MAE" "$OUT/mae-release.ckpt"

evaluate "$MAE" "$OUT/mae" ""

stamp "MAE-CT head $HEAD + tune $TUNE epochs from $MAE"
$HYBRIDSSL pretrain --method mae-ct --init-from "$MAE" --dataset fashion-mnist --model vit-pico --batch-size 256 \
    --set method_args.head_epochs="$HEAD" --set method_args.tune_epochs="$TUNE" --no-progress-bar --output "$OUT/mae-ct" --resume
CT="$OUT/mae-ct/stage3-tune/checkpoints/last.ckpt"
evaluate "$CT" "$OUT/mae-ct" ""
HYBRIDSSL="$HYBRIDSSL" sh "$(dirname "$0")/floors.sh" "$OUT" "$MAE"
stamp "done"
