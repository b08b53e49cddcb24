# physdiff: `make demo` and `make test` are all a newcomer needs (Python 3.11 and make).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup demo demo-smoke test lint bench bench-heat bench-quick bench-nbody bench-nbody-quick \
	bench-smoke bench-smoke-quick clean

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

# Small smoke demo (32², 32 simulations): generate -> train -> infer t = 0.35 and t = 0 with
# figures and a GIF, in runs/demo-smoke/.
demo-smoke: setup
	$(PY) generate.py --recipe datasets/smoke-demo.json --out runs/demo-smoke/data
	$(PY) train.py --data runs/demo-smoke/data --out runs/demo-smoke --preset smoke-demo --resume
	$(PY) infer.py --checkpoint runs/demo-smoke/checkpoint.pt --data runs/demo-smoke/data/test.h5 \
		--n-samples 8 --out runs/demo-smoke/posterior

# ruff, the test suite (with the Burgers plug-in's tests), then the packaging check: a wheel
# installed into a fresh venv runs the heat chain and the README's API snippet
test: setup
	$(PY) -m ruff check physdiff simulators tests benchmarks examples *.py
	$(PY) -m pytest -q
	PYTHON=$(PYTHON) bash .ci/check-wheel

lint: setup
	$(PY) -m ruff check physdiff simulators tests benchmarks examples *.py

bench: bench-heat bench-nbody bench-smoke

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

bench-smoke: setup
	$(PY) benchmarks/smoke.py

bench-smoke-quick: setup
	$(PY) benchmarks/smoke.py --quick
