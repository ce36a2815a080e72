# Shared by the results-at-real-budgets scripts (sourced, not run): the log stamps that
# benchmarks/flagship_table.py reads the stage times from, and the protocols every row is measured with
# (k-NN, linear probe, k-means clustering, linear heads on 1% and 10% of the labels).
# Needs OUT and HYBRIDSSL set; EVAL_FLAGS (default none) is added to every evaluation, e.g. a smoke test's
# "--limit-train 512 --limit-test 512".
PROTOCOLS=${PROTOCOLS:-"knn linear clustering"}
LOWSHOT="--set lowshot.heads=[linear] --lowshot-subsets 1%,10%"
EVAL_FLAGS=${EVAL_FLAGS:-}
stamp() { echo "[$(date -u +%FT%TZ)] $*" | tee -a "$OUT/log.txt"; }

evaluate() {  # checkpoint, results folder, extra flags
    for p in $PROTOCOLS; do
        stamp "evaluate $p $3 ($1)"
        $HYBRIDSSL evaluate --checkpoint "$1" --protocol "$p" --output "$2" $3 $EVAL_FLAGS
    done
    stamp "evaluate lowshot $3 ($1)"
    $HYBRIDSSL evaluate --checkpoint "$1" --protocol lowshot $LOWSHOT --output "$2" $3 $EVAL_FLAGS
}
