# trimflow: `make build BOARD=pynq-z2` runs the whole flow; `make test` runs the test suite.
# Both create .venv on first use (env/setup.sh) and reuse it afterwards.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
BOARD ?= pynq-z2
CONFIG ?=
DATA_DIR ?=
TARGET_FPS ?=
PYTEST_ARGS ?=
STAMP := $(VENV)/.trimflow-setup

BUILD_ARGS := --board $(BOARD) $(if $(CONFIG),--config $(CONFIG)) $(if $(DATA_DIR),--data-dir $(DATA_DIR)) \
              $(if $(TARGET_FPS),--target-fps $(TARGET_FPS))

.PHONY: setup build pretrain test test-all boards bench clean
setup: $(STAMP)

$(STAMP): env/setup.sh env/constraints.txt env/requirements.txt env/torch.txt env/no-deps.txt pyproject.toml
	bash env/setup.sh
	touch $@

build: setup
	$(VENV)/bin/trimflow build $(BUILD_ARGS)

pretrain: setup
	$(VENV)/bin/trimflow pretrain --out checkpoints/cnv-fashion-mnist.pt $(if $(DATA_DIR),--data-dir $(DATA_DIR))

boards: setup
	$(VENV)/bin/trimflow boards

# The default suite: everything but the `slow` marker (CI runs this).
test: setup
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

test-all: setup
	$(PY) -m pytest $(PYTEST_ARGS)

clean:
	rm -rf build
