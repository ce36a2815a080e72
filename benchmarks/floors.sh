#!/bin/sh
# The floors of a results table, into OUT/floors: the same ViT as CHECKPOINT at random init (every protocol
# of benchmarks/protocols.sh) and raw pixels (k-NN, linear probe, low-shot). Resumable like the rows.
#   sh benchmarks/floors.sh OUT CHECKPOINT
set -eu
OUT=${1:?usage: sh benchmarks/floors.sh OUT CHECKPOINT}
CKPT=${2:?usage: sh benchmarks/floors.sh OUT CHECKPOINT}
HYBRIDSSL=${HYBRIDSSL:-hybridssl}
mkdir -p "$OUT/floors"
LOG="$OUT/floors/log.txt"
. "$(dirname "$0")/protocols.sh"
evaluate "$CKPT" "$OUT/floors" "--random-init"
for protocol in knn linear lowshot; do measure "$CKPT" "$OUT/floors" "$protocol" "--raw-pixels"; done
stamp "floors done"
