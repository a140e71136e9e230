# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Tests that must also pass on the JAX backend (layers, ops, models). The JAX
# run is also where the channels_first convolution tests run on a CPU without
# oneDNN (no AVX-512, or TF_ENABLE_ONEDNN_OPTS=0): TensorFlow's CPU Conv2D
# takes channels first only through oneDNN, so test-tf skips them there.
JAX_TESTS := tests/layers tests/models tests/test_ops.py tests/test_norms.py \
	tests/test_utils.py \
	tests/test_convert.py tests/test_benchmark.py tests/test_recalibrate.py
# The torch run, `make test-torch`, is not part of `make test` (CI): see
# the README's Backends section for the figures behind that choice. It
# installs the `torch` extra into the same .venv on first use (its own
# stamp: `make test` never installs torch) and runs under
# KERAS_BACKEND=torch the layer, layer contract, ops, model, converter and
# recalibration tests, and two training runs of `keras-seqnorm train`
# (digits; mixed_bfloat16 with gradient accumulation). Measured from a
# fresh clone on this 2-core machine (shared with other
# jobs): 13 minutes, the .venv and torch about 3, the 478 tests then 10
# (565 tests on 2026-12-01: 3.4 minutes with torch installed).
TORCH_STAMP := $(VENV)/.installed-torch
TORCH_TESTS := tests/layers tests/models tests/test_ops.py tests/test_norms.py \
	tests/test_utils.py tests/test_imports.py \
	tests/test_convert.py tests/test_benchmark.py tests/test_recalibrate.py \
	tests/training/test_trainer.py::test_train_digits_writes_the_run_directory \
	tests/training/test_trainer.py::test_grad_accum_clip_precision_and_augmentation
# The commands' tests that also run on JAX, marked `jax_run`: train,
# compare, landscape, tune and reproduce once each, and a run on two JAX
# devices and on two processes (keras.distribution.DataParallel).
JAX_COMMAND_TESTS := tests/training tests/analysis

.PHONY: setup test test-tf test-jax test-torch lint package demo bench \
	reproduce clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[tensorflow,jax,train,test]"
	touch $(STAMP)

lint: $(STAMP)
	$(PY) -m ruff check keras_seqnorm tests benchmarks examples .ci

# The TensorFlow run and the JAX run keep about one core busy each (CI has
# two): they run side by side, each one's output printed as it ends.
test: lint package
	$(MAKE) --no-print-directory -j2 --output-sync=target test-tf test-jax

# The sdist and the wheel, built with the venv's setuptools (no download),
# checked by twine and .ci/check_dist.py (contents; the wheel imports from
# a folder of its own, not from this checkout).
package: $(STAMP)
	rm -rf dist
	$(PY) -m build --quiet --no-isolation --outdir dist .
	$(PY) -m twine check --strict dist/*
	$(PY) .ci/check_dist.py dist

test-tf: $(STAMP)
	KERAS_BACKEND=tensorflow $(PY) -m pytest -q -ra tests

test-jax: $(STAMP)
	KERAS_BACKEND=jax $(PY) -m pytest -q -ra $(JAX_TESTS)
	KERAS_BACKEND=jax $(PY) -m pytest -q -ra -m jax_run $(JAX_COMMAND_TESTS)

$(TORCH_STAMP): $(STAMP)
	$(PY) -m pip install -q -e ".[torch]"
	touch $(TORCH_STAMP)

test-torch: $(TORCH_STAMP)
	KERAS_BACKEND=torch $(PY) -m pytest -q -ra $(TORCH_TESTS)

demo: $(STAMP)
	KERAS_BACKEND=tensorflow $(PY) -m keras_seqnorm compare \
		--dataset digits --model simplecnn --norms batch,ghost,sequential \
		--seeds 3 --run-dir runs/demo

bench: $(STAMP)
	KERAS_BACKEND=tensorflow $(PY) benchmarks/run.py

reproduce: $(STAMP)
	KERAS_BACKEND=tensorflow $(PY) -m keras_seqnorm reproduce \
		--run-dir runs/reproduce --out docs/results.md

clean:
	rm -rf $(VENV) runs .pytest_cache dist keras_seqnorm.egg-info
