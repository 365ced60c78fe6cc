# The two commands of the README (.ci/run runs the second):
#   make demo   install what is missing, train a compressed LeNet-300-100 on Fashion-MNIST, print its report
#   make test   install what is missing (test extras too), run the test suite (make test-suite), then
#               the other OpenCL drivers (make test-drivers, docs/PORTABILITY.md): install Mesa rusticl,
#               Intel's CPU runtime and Oclgrind; run the kernel and layer tests on the first two and
#               the kernel tests under Oclgrind's checks
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip -q --disable-pip-version-check

.PHONY: demo test test-suite data runtime-deps venv venv-test clean drivers test-drivers

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

test: test-suite test-drivers

test-suite: venv-test data runtime-deps
	$(BIN)/python -m pytest -q

# The other OpenCL drivers (docs/PORTABILITY.md): Debian's mesa-opencl-icd (rusticl, on llvmpipe with
# RUSTICL_ENABLE=llvmpipe) where apt is usable, and the `drivers` extra (Intel's CPU runtime,
# Oclgrind).  Intel's wheel ships an .icd naming a placeholder path, so $(VENDORS) holds one naming the
# installed libintelocl.so next to the system's .icd files, for OCL_ICD_VENDORS.  Oclgrind registers
# itself with pyopencl's loader; the runtime never picks it unless named.
VENDORS := $(abspath $(VENV))/vendors
$(VENV)/.drivers: pyproject.toml $(VENV)/.test
	$(PIP) install $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX)) -e '.[pocl,report,test,drivers]'
	touch $@

drivers: $(VENV)/.drivers data
	@dpkg -s mesa-opencl-icd >/dev/null 2>&1 || ! command -v apt-get >/dev/null || [ "$$(id -u)" != 0 ] || \
	  { echo "installing mesa-opencl-icd with apt-get"; apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mesa-opencl-icd >/dev/null; }
	rm -rf $(VENDORS) && mkdir -p $(VENDORS)
	for f in /etc/OpenCL/vendors/*.icd; do [ ! -e "$$f" ] || cp "$$f" $(VENDORS)/; done
	echo "$(abspath $(VENV))/lib/libintelocl.so" > $(VENDORS)/intel-cpu.icd

# Kernel and layer tests on rusticl and Intel; the kernel tests but the `big` ones (too slow to
# simulate) under Oclgrind with its data-race and API checks (out-of-bounds accesses are always
# checked), which fail a test on any report on stderr (tests/conftest.py); and with
# every driver installed and no $$PROXCL_DEVICE, the device tests (the default is no simulator).
KERNEL_TESTS := tests/test_ops_dense.py tests/test_ops_sparse.py tests/test_optim.py tests/test_loop_budget.py
PYTEST := OCL_ICD_VENDORS=$(VENDORS) $(BIN)/python -m pytest -q -p no:cacheprovider
test-drivers: drivers
	RUSTICL_ENABLE=llvmpipe PROXCL_DEVICE=rusticl $(PYTEST) $(KERNEL_TESTS) tests/test_layers.py
	PROXCL_DEVICE=intel $(PYTEST) $(KERNEL_TESTS) tests/test_layers.py
	env -u PROXCL_DEVICE RUSTICL_ENABLE=llvmpipe $(PYTEST) tests/test_runtime.py
	PROXCL_DEVICE=oclgrind OCLGRIND_DATA_RACES=1 OCLGRIND_CHECK_API=1 $(PYTEST) -n 2 -m "not big" $(KERNEL_TESTS)

clean:
	rm -rf $(VENV) build runtime/build src/*.egg-info .pytest_cache .hypothesis
