# tfppml: `make demo` and `make test` are all a newcomer needs; both install first.
#
#   make install    .venv with requirements.lock, then the kernels (a fast no-op when nothing changed)
#   make demo       train a CNN, secret-share it among three server processes, serve private predictions
#   make test       the default suite (slow tests excluded; under 30 minutes on 2 cores)
#   make test-all   every test, slow ones too
#   make bench      the benchmarks/ scripts of the foundation
#   make bazel-test the same kernels built and tested with Bazel, offline
#   make notebooks  run every tutorial in notebooks/ headlessly; fails on an error or a process left behind

PYTHON ?= python3.11
VENV := .venv
VPY := $(VENV)/bin/python
DEPS_STAMP := $(VENV)/.tfppml-deps
KERNELS_STAMP := $(VENV)/.tfppml-kernels
# SEAL 4.1.2 for the HE kernels, built outside the source tree (scripts/build_seal.sh; a no-op once cached).
# Set TFPPML_SEAL_DIR to use another location (setup.py reads the same variable).
SEAL_DIR := $(or $(TFPPML_SEAL_DIR),$(HOME)/.cache/tfppml/seal-4.1.2)
SEAL_LIB := $(SEAL_DIR)/lib/libseal-4.1.a
CC_FILES := $(shell find cc -name '*.cc' -o -name '*.h' -o -name '*.bzl') setup.py
PYTEST_ARGS ?=

.PHONY: install seal demo test test-all bench bazel-test notebooks clean

install: $(KERNELS_STAMP)

# The jax pin of tensorflow-federated cannot be met (see requirements.lock), so TFF goes in with --no-deps and
# `pip check` is not part of the install.
$(DEPS_STAMP): requirements.lock
	@test -x $(VPY) || $(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install --disable-pip-version-check -q -r requirements.lock
	$(VPY) -m pip install --disable-pip-version-check -q --no-deps $$(sed -n 's/^# nodeps: //p' requirements.lock)
	@# Full Fashion-MNIST ships as a Debian package (tfppml.datasets reads it); elsewhere its tests skip, saying why.
	@if command -v apt-get >/dev/null && ! dpkg -s dataset-fashion-mnist >/dev/null 2>&1; then \
	  (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) </dev/null \
	  || echo "note: could not install Debian's dataset-fashion-mnist; Fashion-MNIST tests will be skipped"; fi
	@touch $@

# SEAL is fetched (pyfhel 3.5.0 sdist, via pip) and built once; a failure stops here with a clear message.
seal: $(SEAL_LIB)

$(SEAL_LIB):
	TFPPML_SEAL_DIR=$(SEAL_DIR) PYTHON=$(PYTHON) bash scripts/build_seal.sh

# Built without build isolation so that the build sees the TensorFlow the kernels will be loaded into.
$(KERNELS_STAMP): $(DEPS_STAMP) $(SEAL_LIB) $(CC_FILES)
	$(VPY) -m pip install --disable-pip-version-check -q --no-deps --no-build-isolation -e .
	@touch $@

demo: install
	$(VPY) scripts/demo.py

test: install
	$(VPY) -m pytest -m "not slow" $(PYTEST_ARGS) tests

test-all: install
	$(VPY) -m pytest $(PYTEST_ARGS) tests

bench: install
	$(VPY) benchmarks/ring_ops.py

bazel-test: install
	bash scripts/bazel_test.sh

notebooks: install
	$(VPY) scripts/run_notebooks.py

clean:
	rm -rf build *.egg-info $(KERNELS_STAMP)
	find tfppml -name '*.so' -delete
