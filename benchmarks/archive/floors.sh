#!/bin/sh
# The floors of a results table, into OUT/floors: the same ViT as CHECKPOINT at random init (every protocol
# of benchmarks/archive/protocols.sh) and raw pixels (k-NN, linear probe, low-shot). Resumable like the rows.
# The raw-pixel linear probe sweeps lrs below the default grid too: on Fashion-MNIST the default grid
# (0.01-1) picked its smallest lr, 0.01 (test 84.26), and 0.003 wins with the wider sweep (84.51).
#   sh benchmarks/archive/floors.sh OUT CHECKPOINT
set -eu
OUT=${1:?usage: sh benchmarks/archive/floors.sh OUT CHECKPOINT}
CKPT=${2:?usage: sh benchmarks/archive/floors.sh OUT CHECKPOINT}
HYBRIDSSL=${HYBRIDSSL:-hybridssl}
mkdir -p "$OUT/floors"
LOG="$OUT/floors/log.txt"
. "$(dirname "$0")/protocols.sh"
evaluate "$CKPT" "$OUT/floors" "--random-init"
measure "$CKPT" "$OUT/floors" knn "--raw-pixels"
measure "$CKPT" "$OUT/floors" linear "--raw-pixels --lrs 0.001,0.003,0.01,0.03,0.1,0.3,1"
measure "$CKPT" "$OUT/floors" lowshot "--raw-pixels"
stamp "floors done"
