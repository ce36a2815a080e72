# One-command set-up: `make demo` (install, MAE-CT tuning of the shipped MAE + evaluation, report) and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install system-deps test-deps demo test test-slow mutation bench clean

install: $(STAMP)

# Re-installs only when the package metadata changed; the venv itself is kept.
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -e '.[dev]'
	@touch $(STAMP)

# Fashion-MNIST (Debian: dataset-fashion-mnist) and tcmalloc (a 1.16-1.33x faster CPU step);
# installed with apt when missing and apt is usable, otherwise skipped with a note.
system-deps:
	@sh scripts/system-deps.sh

test-deps:
	@sh scripts/system-deps.sh test

demo: install system-deps
	$(BIN)/hybridssl demo

test: install test-deps
	$(BIN)/python -m pytest -q

test-slow: install test-deps
	$(BIN)/python -m pytest -q -m slow

# Mutation testing of methods, losses, nn and evaluation (docs/testing.md); slow, not part of `make test`.
# mutmut keeps its results in mutants/ and re-runs only the mutants of functions that changed.
mutation: install
	$(BIN)/python -m pip install -q -e '.[mutation]'
	OMP_NUM_THREADS=1 $(BIN)/mutmut run
	$(BIN)/python scripts/mutation_score.py --survivors mutants/survivors.txt

bench: install system-deps
	$(BIN)/python benchmarks/run.py

clean:
	rm -rf runs .pytest_cache mutants
