# Two commands for a newcomer: `make demo` and `make test` (see README.md).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE := 1
export PYTHONUNBUFFERED := 1

.PHONY: demo test venv clean

# torch==2.13.0 is pinned in the same pip call as the project so pip takes the local CPU build
# instead of pulling the newest CUDA wheels.
$(VENV)/.installed: setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0 -e ".[test]"
	touch $@

venv: $(VENV)/.installed

test: venv
	$(PY) -m pytest -q -p no:cacheprovider --doctest-modules htr_lightning tests

demo: venv
	$(PY) examples/demo.py

clean:
	rm -rf $(VENV) checkpoints/demo
