# Two commands do everything on a fresh machine:
#   make sweep   a small MAD sweep on CPU
#   make test    the test suite
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: sweep test bench clean

$(STAMP): requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	touch $(STAMP)

sweep: $(STAMP)
	$(PY) -m experiments.sweep --config=experiments/configs/mad.py --config.preset=smoke --config.workdir=workdir/smoke

# Test files spread over TEST_WORKERS processes (pytest-xdist; one file stays on one worker, so a
# module's shared compiled fixtures are built once): XLA:CPU compiles on one core, so on the
# 2-core CI machine two workers take about half the time of one. TEST_WORKERS=0: one process.
TEST_WORKERS ?= 2

test: $(STAMP)
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile

clean:
	rm -rf $(VENV) .pytest_cache workdir
