# tfppml: `make demo` and `make test` are all a newcomer needs; both install first.
#
#   make install    .venv with requirements.lock, then the kernels (a fast no-op when nothing changed)
#   make test       the default suite (slow tests excluded; under 30 minutes on 2 cores)
#   make test-all   every test, slow ones too
#   make bench      the benchmarks/ scripts of the foundation
#   make bazel-test the same kernels built and tested with Bazel, offline

PYTHON ?= python3.11
VENV := .venv
VPY := $(VENV)/bin/python
DEPS_STAMP := $(VENV)/.tfppml-deps
KERNELS_STAMP := $(VENV)/.tfppml-kernels
CC_FILES := $(shell find cc -type f) setup.py
PYTEST_ARGS ?=

.PHONY: install test test-all bench bazel-test clean

install: $(KERNELS_STAMP)

# The jax pin of tensorflow-federated cannot be met (see requirements.lock), so TFF goes in with --no-deps and
# `pip check` is not part of the install.
$(DEPS_STAMP): requirements.lock
	@test -x $(VPY) || $(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install --disable-pip-version-check -q -r requirements.lock
	$(VPY) -m pip install --disable-pip-version-check -q --no-deps $$(sed -n 's/^# nodeps: //p' requirements.lock)
	@touch $@

# Built without build isolation so that the build sees the TensorFlow the kernels will be loaded into.
$(KERNELS_STAMP): $(DEPS_STAMP) $(CC_FILES)
	$(VPY) -m pip install --disable-pip-version-check -q --no-deps --no-build-isolation -e .
	@touch $@

test: install
	$(VPY) -m pytest -m "not slow" $(PYTEST_ARGS) tests

test-all: install
	$(VPY) -m pytest $(PYTEST_ARGS) tests

bench: install
	$(VPY) benchmarks/ring_ops.py

bazel-test: install
	bash scripts/bazel_test.sh

clean:
	rm -rf build *.egg-info $(KERNELS_STAMP)
	find tfppml -name '*.so' -delete
