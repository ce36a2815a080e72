"""The mutation score of the last `mutmut run`, with the reviewed equivalent mutants left out.

    python scripts/mutation_score.py [--survivors FILE]

Reads mutmut's results (run it from the repository root after `mutmut run`) and
tests/equivalent_mutants.txt, whose lines are `mutant name | the mutated line | why no behaviour
changes`. An entry whose mutant no longer exists or no longer changes that line is stale: mutmut
numbers mutants per function, so editing a function renumbers them and the list must be reviewed
again. Prints one row per file and the total; exits 1 on stale entries.

Killed counts mutants that a test failed on, timed out on, or that crashed the test process;
survived counts mutants every covering test passed with, and mutants no test reaches.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

EQUIVALENT = Path("tests/equivalent_mutants.txt")
KILLED = {"killed", "timeout", "segfault", "caught by type check"}
SURVIVED = {"survived", "no tests"}
DEVICE_ONLY = "device argument only"  # the reason that marks mutants equivalent on the CPU but not on a GPU


def mutmut(*args: str) -> str:
    return subprocess.run([sys.executable, "-m", "mutmut", *args], capture_output=True, text=True, check=True).stdout


def statuses() -> dict[str, str]:
    found = {}
    for line in mutmut("results", "--all", "true").splitlines():
        name, _, status = line.strip().rpartition(": ")
        if name:
            found[name] = status
    return found


def mutated_line(name: str) -> str:
    """The `+` line of the mutant's diff, stripped."""
    added = [line[1:].strip() for line in mutmut("show", name).splitlines() if line.startswith("+") and not line.startswith("+++")]
    return " ".join(added)


def equivalent_entries() -> dict[str, tuple[str, str]]:
    entries = {}
    for number, line in enumerate(EQUIVALENT.read_text().splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        parts = [p.strip() for p in line.split(" | ")]
        if len(parts) != 3 or not all(parts):
            raise SystemExit(f"{EQUIVALENT}:{number}: expected `mutant | mutated line | reason`, got {line!r}")
        entries[parts[0]] = (parts[1], parts[2])
    return entries


def module_of(name: str) -> str:
    module = name.split(".x_")[0].split(".xǁ")[0]
    return module.removeprefix("hybridssl.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--survivors", type=Path, help="write the surviving, non-equivalent mutants here")
    args = parser.parse_args()
    found = statuses()
    equivalent = equivalent_entries()
    stale = []
    for name, (line, _) in equivalent.items():
        if found.get(name) not in SURVIVED:
            stale.append(f"{name}: {found.get(name, 'no such mutant')}")
        elif mutated_line(name) != line:
            stale.append(f"{name}: now mutates `{mutated_line(name)}`")
    counts: dict[str, Counter] = defaultdict(Counter)
    survivors = []
    for name, status in found.items():
        module = module_of(name)
        if name in equivalent and status in SURVIVED:
            counts[module]["equivalent"] += 1
            counts[module]["device-only"] += equivalent[name][1].startswith(DEVICE_ONLY)
        elif status in KILLED:
            counts[module]["killed"] += 1
        elif status in SURVIVED:
            counts[module]["survived"] += 1
            survivors.append(name)
        else:
            counts[module]["not run"] += 1
    print("| module | mutants | killed | survived | equivalent | not run | score |")
    print("|---|---|---|---|---|---|---|")
    total: Counter = Counter()
    for module in sorted(counts):
        c = counts[module]
        total.update(c)
        print(row(module, c))
    print(row("**all**", total))
    strict = total["killed"] / (total["killed"] + total["survived"] + total["device-only"])
    print(f"\nCounting the {total['device-only']} device-only mutants (equivalent on the CPU only) as survivors: {100 * strict:.1f}%")
    if args.survivors:
        args.survivors.write_text("".join(f"{s}\n" for s in sorted(survivors)))
    if stale:
        print("\nStale entries in " + str(EQUIVALENT) + ":\n  " + "\n  ".join(stale))
        sys.exit(1)


def row(module: str, c: Counter) -> str:
    judged = c["killed"] + c["survived"]
    score = f"{100 * c['killed'] / judged:.1f}%" if judged else "-"
    mutants = c["killed"] + c["survived"] + c["equivalent"] + c["not run"]
    return f"| {module} | {mutants} | {c['killed']} | {c['survived']} | {c['equivalent']} | {c['not run']} | {score} |"


if __name__ == "__main__":
    main()
