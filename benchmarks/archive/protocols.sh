# Shared by the results-at-real-budgets scripts (sourced, not run): the log stamps that
# benchmarks/archive/flagship_table.py reads the stage times from, and the protocols every row is measured with
# (k-NN, linear probe, k-means clustering, linear heads on 1% and 10% of the labels).
# Needs OUT and HYBRIDSSL set; LOG (default OUT/log.txt) gets the stamps; EVAL_FLAGS (default none) is
# added to every evaluation, e.g. a smoke test's "--limit-train 512 --limit-test 512".
set -f  # no globbing: "[linear]" below is an argument, not a pattern
PROTOCOLS=${PROTOCOLS:-"knn linear clustering"}
LOWSHOT="--set lowshot.heads=[linear] --lowshot-subsets 1%,10%"
EVAL_FLAGS=${EVAL_FLAGS:-}
stamp() { echo "[$(date -u +%FT%TZ)] $*" | tee -a "${LOG:-$OUT/log.txt}"; }
stamp "session start"  # the stage a killed session was in has no end time: the table leaves it out

measure() {  # checkpoint, results folder, protocol, extra flags: once (a killed session redoes only the unfinished ones)
    done_list="$2/protocols-done.txt"
    if [ -f "$done_list" ] && grep -qxF "$3 $4" "$done_list"; then return 0; fi
    stamp "evaluate $3 $4 ($1)"
    settings=""; [ "$3" = lowshot ] && settings=$LOWSHOT
    $HYBRIDSSL evaluate --checkpoint "$1" --protocol "$3" $settings --output "$2" $4 $EVAL_FLAGS
    echo "$3 $4" >> "$done_list"
}

evaluate() {  # checkpoint, results folder, extra flags
    for p in $PROTOCOLS lowshot; do measure "$1" "$2" "$p" "$3"; done
}
