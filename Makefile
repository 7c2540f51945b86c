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

test: $(STAMP)
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) .pytest_cache workdir
