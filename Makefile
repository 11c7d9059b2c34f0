# trimflow: `make build BOARD=pynq-z2` runs the whole flow; `make test` runs the test suite.
# Both create .venv on first use (env/setup.sh) and reuse it afterwards.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
BOARD ?= pynq-z2
CONFIG ?=
DATA_DIR ?=
TARGET_FPS ?=
BUILD_DIR ?= build
PYTEST_ARGS ?=
SET ?=
MODEL ?=
DATASET ?=
STAMP := $(VENV)/.trimflow-setup

# MODEL / DATASET are shorthands for --set model=... / dataset=...; SET takes any other KEY=VALUE pairs
SETS = $(strip $(SET) $(if $(MODEL),model=$(MODEL)) $(if $(DATASET),dataset=$(DATASET)))
# Every build variable but DATA_DIR, which the synthesis container sees at /data (see synth)
FLOW_ARGS := --board $(BOARD) $(if $(CONFIG),--config $(CONFIG)) $(if $(TARGET_FPS),--target-fps $(TARGET_FPS)) \
             --build-dir $(BUILD_DIR) $(if $(SETS),--set $(SETS))
BUILD_ARGS := $(FLOW_ARGS) $(if $(DATA_DIR),--data-dir $(DATA_DIR))

.PHONY: setup build pretrain test test-all boards bench clean docker synth deploy sweep
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

# Design-space sweep on Ray (README, "Your own model"): SWEEP=<sweep YAML> (default: the 40-trial grid of budgets ×
# W8A8..W2A2 × pynq-z2/zybo-z7-10), SWEEP_OUT=<folder>, ADDRESS=<head:port> joins a running Ray cluster.
SWEEP ?=
SWEEP_OUT ?= $(BUILD_DIR)/sweep
ADDRESS ?=
sweep: setup
	$(VENV)/bin/trimflow sweep $(SWEEP) --out $(SWEEP_OUT) $(if $(ADDRESS),--address $(ADDRESS)) \
	  $(if $(CONFIG),--config $(CONFIG)) $(if $(DATA_DIR),--data-dir $(DATA_DIR)) $(if $(SETS),--set $(SETS))

# The default suite: everything but the `slow` marker (CI runs this).
test: setup
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

test-all: setup
	$(PY) -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(BUILD_DIR)

# ---- synthesis container and board deployment (README: "Synthesis with Vivado") ----
DOCKER ?= docker
IMAGE ?= trimflow-synth
XILINX_DIR ?= /tools/Xilinx
VIVADO_VERSION ?=
XILINXD_LICENSE_FILE ?=
NETWORK ?= none
HOST ?=
BOARD_USER ?= xilinx
DEPLOY_DIR ?= trimflow-$(BOARD)
FMNIST := /usr/share/datasets/fashion-mnist

docker:
	$(DOCKER) build -f docker/Dockerfile -t $(IMAGE) .

# The repo is mounted over the image's copy (same path, so the image's editable install runs this checkout);
# build outputs land here, owned by the calling user. It takes the same variables as `make build` (CONFIG, SET,
# MODEL, DATASET, BUILD_DIR, DATA_DIR, TARGET_FPS), so it synthesises the configuration that build made; their
# paths must lie inside the repository (relative), except DATA_DIR, which is mounted. Xilinx's settings64.sh
# scripts hold absolute paths, so the tools are mounted at their host path. NETWORK=host when a licence server must
# be reached.
synth:
	@bash docker/synth-preflight.sh "$(DOCKER)" "$(IMAGE)" "$(XILINX_DIR)" "$(BUILD_DIR)" "$(CONFIG)" "$(MODEL)"
	$(DOCKER) run --rm --network $(NETWORK) --user "$$(id -u):$$(id -g)" \
	  -v $(XILINX_DIR):$(XILINX_DIR):ro -e XILINX_ROOT=$(XILINX_DIR) -v "$(CURDIR)":/opt/trimflow -w /opt/trimflow \
	  -e TRIMFLOW_CACHE=/opt/trimflow/build/.cache \
	  $(if $(VIVADO_VERSION),-e VIVADO_VERSION=$(VIVADO_VERSION)) \
	  $(if $(XILINXD_LICENSE_FILE),-e XILINXD_LICENSE_FILE=$(XILINXD_LICENSE_FILE)) \
	  $(if $(wildcard $(FMNIST)),-v $(FMNIST):$(FMNIST):ro) \
	  $(if $(DATA_DIR),-v "$(abspath $(DATA_DIR))":/data:ro) \
	  $(IMAGE) bash -c 'trimflow build $(FLOW_ARGS) $(if $(DATA_DIR),--data-dir /data)'

# Copies $(BUILD_DIR)/<board>/synth/deploy to <BOARD_USER>@<HOST>:<DEPLOY_DIR> (not run in CI).
PACKAGE := $(BUILD_DIR)/$(BOARD)/synth/deploy
deploy:
	@test -n "$(HOST)" || { echo "usage: make deploy BOARD=$(BOARD) HOST=<board address> [BUILD_DIR=...] [BOARD_USER=xilinx]" >&2; exit 2; }
	@test -f $(PACKAGE)/manifest.json || \
	  { echo "no deployment package in $(PACKAGE): run make synth BOARD=$(BOARD) with the variables of your make build" >&2; exit 2; }
	@grep -q '"bitfile": "bitfile/' $(PACKAGE)/manifest.json || \
	  { echo "$(PACKAGE) has no bitfile (built without Vivado): run make synth BOARD=$(BOARD) with the variables of your make build" >&2; exit 2; }
	ssh $(BOARD_USER)@$(HOST) 'rm -rf $(DEPLOY_DIR)'
	scp -rq $(PACKAGE) $(BOARD_USER)@$(HOST):$(DEPLOY_DIR)
	@echo "on the board: sudo -i; source /etc/profile.d/pynq_venv.sh; cd /home/$(BOARD_USER)/$(DEPLOY_DIR);"
	@echo "  pip3 install finn-plus-driver==1.6.1 (once); python3 -m trimflow_runtime --board $(BOARD) --npy images.npy"
