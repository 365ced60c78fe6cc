# The two commands of the README:
#   make demo   install what is missing, train a compressed LeNet-300-100 on Fashion-MNIST, print its report
#   make test   install what is missing (test extras too), run the test suite
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip -q --disable-pip-version-check

.PHONY: demo test data runtime-deps venv venv-test clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.runtime: pyproject.toml | $(BIN)/python
	$(PIP) install -e '.[pocl,report]'
	touch $@

# PyTorch (a test extra) from this index too when set: https://download.pytorch.org/whl/cpu gives
# its CPU build, all the tests need, where pip's default is the larger CUDA build (Linux)
TORCH_INDEX ?=
$(VENV)/.test: pyproject.toml $(VENV)/.runtime
	$(PIP) install $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX)) -e '.[pocl,report,test]'
	touch $@

venv: $(VENV)/.runtime
venv-test: $(VENV)/.test

# Fashion-MNIST from Debian's dataset-fashion-mnist, and Debian's PoCL (pocl-opencl-icd), where apt is
# usable. proxcl also looks in $$PROXCL_DATA and ~/.cache/proxcl and can download the data itself; the
# PoCL wheel (pocl-binary-distribution) is the CPU device where apt is not, but its LLVM 14 cannot
# name newer CPUs (AMD Zen 5: "unknown target CPU 'generic'"), which Debian's PoCL 3.1 can.
SYSTEM_PACKAGES := dataset-fashion-mnist pocl-opencl-icd
data:
	@missing=""; for p in $(SYSTEM_PACKAGES); do \
	  dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ] && command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	  echo "installing$$missing with apt-get"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

# The C runtime's packages (runtime/Makefile: OpenCL headers, cJSON, the aarch64 cross compiler);
# its tests build it.
runtime-deps:
	@$(MAKE) -s -C runtime deps

demo: venv data
	$(BIN)/proxcl demo

test: venv-test data runtime-deps
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) build runtime/build src/*.egg-info .pytest_cache .hypothesis
