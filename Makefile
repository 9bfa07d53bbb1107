# What README's two commands call. Works on a fresh Debian machine with Python 3.11
# (root for apt-get; otherwise sudo is used when present).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.bd-installed
TOOLS  := $(VENV)/.bd-test-tools
SUDO   := $(shell [ "$$(id -u)" = 0 ] || command -v sudo)
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
PKGS   := packages/bd-kernels packages/bd-core packages/bd-defenses packages/bd-cli
CSRC   := $(shell find csrc -name '*.cpp' -o -name '*.cu' -o -name '*.h' -o -name '*.cuh')

# The Python environment and the apt-installed dataset are independent prerequisites: set them up
# side by side (saves the apt download and unpacking on a fresh machine). Recipes stay sequential.
MAKEFLAGS += -j2

.PHONY: setup data demo test lint bench asan test-isa report-example clean

setup: $(STAMP)

# What the demo needs: torch, the four packages, and the kernels compiled for the CPU only
# (CUDA code cannot run on a machine without a GPU; the test setup below compiles it too).
$(STAMP): $(foreach p,$(PKGS),$(p)/pyproject.toml) packages/bd-kernels/setup.py Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip setuptools wheel
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1 ninja
	# bd-kernels compiles against the torch installed above
	BD_KERNELS_CPU_ONLY=1 $(BIN)/pip install -q --no-build-isolation -e packages/bd-kernels
	$(BIN)/pip install -q --no-build-isolation -e packages/bd-core -e packages/bd-defenses -e packages/bd-cli
	touch $(STAMP)

# What the tests need besides: test tools, Ray, and the kernels built again with their CUDA
# sources whenever a CUDA toolkit is present, so that the CUDA code always compiles.
$(TOOLS): $(STAMP) $(CSRC)
	$(BIN)/pip install -q pytest pytest-benchmark pytest-timeout hypothesis "ruff==0.17.6" "ray>=2.60"
	$(BIN)/pip install -q --no-build-isolation -e packages/bd-kernels
	touch $(TOOLS)

data: $(FMNIST)

$(FMNIST):
	$(SUDO) apt-get update -qq
	$(SUDO) apt-get install -y -qq dataset-fashion-mnist

# The main job: backdoor PreAct-ResNet18 with BadNets on Fashion-MNIST (offline), defend with FT.
demo: setup data
	$(BIN)/bd run --dataset fashion-mnist --arch preact-resnet18 --attack badnets --poison-ratio 0.1 --defense ft --spc 10 --preset quick

# The committed example report (docs/report-example/): its mini-grid (resumable: stored units are
# skipped, so a rerun after a change of code needs the results file removed first) and `bd report`.
report-example: setup data
	$(BIN)/bd grid --config experiments/report-example/grid.toml --store experiments/report-example/results.sqlite
	$(BIN)/bd report --store experiments/report-example/results.sqlite --out docs/report-example --no-pdf

test: $(TOOLS) data
	$(BIN)/python -m pytest -q tests

# bd's conventions, executable: ruff (configured in pyproject.toml); the one-way package order is
# a test (tests/e2e/test_packaging.py).
lint: $(TOOLS)
	$(BIN)/ruff check packages tests experiments bench
	$(BIN)/ruff format --check packages tests experiments bench

bench: $(TOOLS) data
	$(BIN)/python -m pytest -q bench -p no:cacheprovider --benchmark-only --benchmark-json=bench/last.json
	$(BIN)/python bench/report.py bench/last.json

# The CPU kernels built with AddressSanitizer, fuzzed against their reference (any out-of-bounds
# access aborts with a report). Not part of `make test`: it builds a second copy of the extension.
# libstdc++ is preloaded with libasan: python does not link it, and without it ASan's
# interceptor of C++ throws finds no real __cxa_throw and aborts at the first TORCH_CHECK.
ASAN_LIB = $(shell gcc -print-file-name=libasan.so) $(shell gcc -print-file-name=libstdc++.so)
asan: $(TOOLS)
	rm -rf build/asan && mkdir -p build/asan
	cd packages/bd-kernels && BD_KERNELS_CPU_ONLY=1 BD_KERNELS_SANITIZE=address ../../$(BIN)/python setup.py -q \
		build_ext --build-lib ../../build/asan --build-temp ../../build/asan-obj
	cp packages/bd-kernels/src/bd_kernels/*.py build/asan/bd_kernels/
	LD_PRELOAD="$(ASAN_LIB)" ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 PYTHONPATH=build/asan BD_FUZZ_EXAMPLES=300 \
		$(BIN)/python -m pytest -q -p no:cacheprovider tests/bd_kernels/test_fuzz.py tests/bd_kernels/test_ops.py

# Tests that assert on learned outcomes under every CPU code path a user may have: this machine's
# own, ATen's and oneDNN's AVX2 kernels (a CPU without AVX-512), and their baseline kernels, each
# with 1 and with 2 threads (about an hour on a 2-core EPYC; the baseline kernels take 18 minutes).
ISA_PATHS := native avx2:ATEN_CPU_CAPABILITY=avx2:ONEDNN_MAX_CPU_ISA=AVX2 \
             default:ATEN_CPU_CAPABILITY=default:ONEDNN_MAX_CPU_ISA=SSE41
test-isa: $(TOOLS) data
	@set -e; for path in $(ISA_PATHS); do for threads in 1 2; do \
		echo "== learned tests: $${path%%:*} kernels, $$threads thread(s)"; \
		env $$(echo "$$path" | cut -s -d: -f2- | tr : ' ') OMP_NUM_THREADS=$$threads BD_THREADS=$$threads \
			$(BIN)/python -m pytest -q -p no:cacheprovider -m learned tests; \
	done; done

clean:
	rm -rf $(VENV) build packages/*/build packages/*/src/*.egg-info
