# Two commands set everything up: `make demo` and `make test` (both create .venv on first use).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
export NO_ALBUMENTATIONS_UPDATE := 1
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: venv demo test bench clean

venv: $(VENV)/.installed

# torch is installed alone first, pinned, so pip never resolves a CUDA build for it.
$(VENV)/.installed: requirements.lock pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -r requirements.lock
	# MONAI: the reference for the boundary metrics' tests (and a benchmark peer); without its dependencies,
	# so that the pinned torch stays
	$(PY) -m pip install -q --no-deps monai==1.6.1
	$(PY) -m pip install -q --no-deps -e .
	touch $@

demo: venv
	$(VENV)/bin/lesionseg predict src/lesionseg/assets/samples --out out/demo --overwrite --report
	@echo "masks, overlays and report.html written under out/demo/"

# Peers (MONAI) are installed with the venv, without touching the pinned torch. Every script writes JSON
# under benchmarks/results/ with the machine's description; docs/performance.md reads them.
bench: venv
	$(PY) benchmarks/throughput.py
	$(PY) benchmarks/int8.py
	$(PY) benchmarks/predict_throughput.py
	$(PY) benchmarks/serve_load.py --seconds 10 --workers 1

test: venv
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q

clean:
	rm -rf out runs .pytest_cache
