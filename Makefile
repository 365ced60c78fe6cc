# The two commands of the README:
#   make demo   install what is missing, train a compressed LeNet-300-100 on Fashion-MNIST, print its report
#   make test   install what is missing (test extras too), run the test suite
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip -q --disable-pip-version-check

.PHONY: demo test data venv venv-test clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.runtime: pyproject.toml | $(BIN)/python
	$(PIP) install -e '.[pocl,report]'
	touch $@

$(VENV)/.test: pyproject.toml $(VENV)/.runtime
	$(PIP) install -e '.[pocl,report,test]'
	touch $@

venv: $(VENV)/.runtime
venv-test: $(VENV)/.test

# Fashion-MNIST from Debian's dataset-fashion-mnist where apt is usable; proxcl also
# looks in $$PROXCL_DATA and ~/.cache/proxcl and can download the files itself.
data:
	@if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] \
	   && command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	  echo "installing dataset-fashion-mnist with apt-get"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null; \
	fi

demo: venv data
	$(BIN)/proxcl demo

test: venv-test data
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache .hypothesis
