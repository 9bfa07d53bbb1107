# What README's two commands call. Works on a fresh Debian machine with Python 3.11
# (root for apt-get; otherwise sudo is used when present).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.bd-installed
SUDO   := $(shell [ "$$(id -u)" = 0 ] || command -v sudo)
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
PKGS   := packages/bd-kernels packages/bd-core packages/bd-defenses packages/bd-cli

.PHONY: setup data demo test bench clean

setup: $(STAMP)

$(STAMP): $(foreach p,$(PKGS),$(p)/pyproject.toml) packages/bd-kernels/setup.py Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip setuptools wheel
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q ninja pytest pytest-benchmark pytest-timeout "ray>=2.60"
	# bd-kernels compiles against the torch installed above
	$(BIN)/pip install -q --no-build-isolation -e packages/bd-kernels
	$(BIN)/pip install -q --no-build-isolation -e packages/bd-core -e packages/bd-defenses -e packages/bd-cli
	touch $(STAMP)

data: $(FMNIST)

$(FMNIST):
	$(SUDO) apt-get update -qq
	$(SUDO) apt-get install -y -qq dataset-fashion-mnist

# The main job: backdoor PreAct-ResNet18 with BadNets on Fashion-MNIST (offline), defend with FT.
demo: setup data
	$(BIN)/bd run --dataset fashion-mnist --arch preact-resnet18 --attack badnets --poison-ratio 0.1 --defense ft --spc 10 --preset quick

test: setup data
	$(BIN)/python -m pytest -q tests

bench: setup data
	$(BIN)/python -m pytest -q bench -p no:cacheprovider --benchmark-only --benchmark-json=bench/last.json
	$(BIN)/python bench/report.py bench/last.json

clean:
	rm -rf $(VENV) build packages/*/build packages/*/src/*.egg-info
