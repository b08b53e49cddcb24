# physdiff: `make demo` and `make test` are all a newcomer needs (Python 3.11 and make).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup demo test lint bench bench-heat bench-quick bench-nbody bench-nbody-quick clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[test]'
	touch $(STAMP)

# Small heat demo: generate -> train (few minutes) -> infer; everything lands in runs/demo/.
demo: setup
	$(PY) generate.py --recipe datasets/heat-demo.json --out runs/demo/data
	$(PY) train.py --data runs/demo/data --out runs/demo --preset demo --resume
	$(PY) infer.py --checkpoint runs/demo/checkpoint.pt --data runs/demo/data/test.h5 \
		--limit 64 --n-samples 16 --out runs/demo/posterior

test: setup
	$(PY) -m ruff check physdiff simulators tests benchmarks *.py
	$(PY) -m pytest -q

lint: setup
	$(PY) -m ruff check physdiff simulators tests benchmarks *.py

bench: bench-heat bench-nbody

bench-heat: setup
	$(PY) benchmarks/heat.py

bench-quick: setup
	$(PY) benchmarks/heat.py --quick

bench-nbody: setup
	$(PY) benchmarks/nbody.py

bench-nbody-quick: setup
	$(PY) benchmarks/nbody.py --quick

clean:
	rm -rf runs benchmarks/results
