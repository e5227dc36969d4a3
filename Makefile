# llray: `make demo` runs the quickstart job on an embedded local Ray; `make test` runs the tests.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Ray binds to 127.0.0.1 only (as on macOS) when this is 0; see README "Security".
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER := 0
# constraints.txt pins a CPU-sized torch for development; pyproject keeps a range for GPUs.
# The cluster extra (Ray's job API and dashboard) is installed too: tests/test_submit.py
# starts a local `ray start --head` and submits jobs to it.
STAMP := $(VENV)/.installed

.PHONY: demo test install bench clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e '.[cluster,dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/llray run jobs/quickstart.yaml --output results/quickstart

test: $(STAMP)
	$(BIN)/python -m pytest

bench: $(STAMP)
	for b in benchmarks/*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) results .pytest_cache

# Reference results (README "Reference results"): every strategy on the three benchmarks
# in jobs/reference/, 5 seeds each, into results/reference, then the summary table.
.PHONY: reference
reference: $(STAMP)
	for f in jobs/reference/*.yaml; do \
		$(BIN)/llray run $$f --output results/reference --no-progress || exit 1; done
	$(BIN)/llray report results/reference

# The selection behind the reference jobs' per-strategy values: every tuned strategy's
# 4-point grid on the validation split, tuning seed 100 (not a reporting seed), in this
# process with 2 workers; prints grid × validation ACC and fails if a job differs.
.PHONY: reference-tune
reference-tune: $(STAMP)
	$(BIN)/python scripts/tune_reference.py --check --workers 2
