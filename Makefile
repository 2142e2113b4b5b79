# Two commands for a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
FASHION_DIR := /usr/share/datasets/fashion-mnist
PYTEST := $(PY) -m pytest -q -p no:cacheprovider --import-mode=importlib

.PHONY: demo test test-all bench data venv clean

# The virtual environment, rebuilt when setup.py changes.
$(STAMP): setup.py
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

# Fashion-MNIST: the Debian package when we are root on a Debian-like machine,
# otherwise the loader falls back to the Keras cache or download.
data: $(STAMP)
	@if [ -z "$$TFCOMPRESS_DATA" ] && [ ! -f $(FASHION_DIR)/train-images-idx3-ubyte.gz ] \
	    && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing Debian package dataset-fashion-mnist"; \
	  apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist; \
	fi
	$(PY) -m tfcompress.data fashion_mnist

# The main job: the fashion_mnist recipe (train the teacher, prune it by sensitivity; export,
# evaluate, benchmark), ending in runs/demo/report.md, report.json and pareto.png.
demo: data
	$(PY) -m tfcompress.cli run --recipe fashion_mnist --out runs/demo

# pytest exits 5 when it collects no test; that is not a failure of the code.
test: data
	$(PYTEST) -m "not slow" tests; rc=$$?; [ $$rc -eq 5 ] && rc=0; exit $$rc

test-all: data
	$(PYTEST) tests; rc=$$?; [ $$rc -eq 5 ] && rc=0; exit $$rc

# Performance figures (not tests): pruning quality, size, allocation, distillation and
# training-step cost.
bench: data
	$(PY) -m benchmarks.bench_pruning --baseline=runs/demo-baseline/model.keras --out=runs/bench-pruning
	$(PY) -m benchmarks.bench_tflite --out=runs/bench-tflite
	$(PY) -m benchmarks.bench_channel_pruning --out=runs/bench-channel-pruning
	$(PY) -m benchmarks.bench_int4 --out=runs/bench-int4
	$(PY) -m benchmarks.bench_npu --out=runs/bench-npu
	$(PY) -m benchmarks.bench_allocation --out=runs/bench-allocation
	$(PY) -m benchmarks.bench_distill --out=runs/bench-distill --teacher=runs/bench-distill/teacher_w32.keras --seeds=0,1 --timing_repeats=0
	$(PY) -m benchmarks.bench_training --out=runs/bench-training

clean:
	rm -rf runs build *.egg-info
