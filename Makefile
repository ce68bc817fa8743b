# lpa_domainbed: every target prints what it does. Two commands matter on a fresh machine:
#   make demo    the main job (leave-one-domain-out sweep on the embedded dataset + tables)
#   make test    the test suite
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
DOMAINBED_DIR ?= $(HOME)/.cache/lpa-domainbed/DomainBed
DOMAINBED_URL ?= https://github.com/facebookresearch/DomainBed.git
DOMAINBED_COMMIT := b93c22a
# torch/torchvision as this project is tested with; override for your CUDA, e.g.
#   make setup TORCH_SPEC="torch torchvision --index-url https://download.pytorch.org/whl/cu121"
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
STAMP := $(VENV)/.lpa-setup-done

NAME ?= demo
INPUT_DIR ?= sweeps_output/demo
DATA_DIR ?= sweeps_output/data
OUTPUT_DIR ?= sweeps_output/$(NAME)
LAUNCHER ?=

.PHONY: setup domainbed test test-py310 test-slurm demo sweep sweep-dry-run tables figures bench clean-venv help

help:
	@echo "make demo | test | setup | domainbed | sweep NAME=.. DATA_DIR=.. OUTPUT_DIR=.. [LAUNCHER=..] | tables INPUT_DIR=.. NAME=.. | figures [FIGURES_ARGS=..] | bench [BENCH_ARGS=..]"

$(STAMP): pyproject.toml
	@echo "==> creating the virtual environment $(VENV) with $(PYTHON)"
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "==> installing $(TORCH_SPEC)"
	@$(PY) -m pip install -q $(TORCH_SPEC)
	@echo "==> installing lpa-domainbed (editable) with its dependencies and DomainBed's import-time requirements"
	@$(PY) -m pip install -q -e '.[test]'
	@touch $(STAMP)

setup: $(STAMP)
	@$(MAKE) --no-print-directory domainbed OPTIONAL=1

# Finds DomainBed in DOMAINBED_DIR, clones it at the pinned commit when absent and the network
# allows, and puts it on the virtual environment's path (a .pth file in site-packages).
domainbed: $(STAMP)
	@set -e; dir="$(DOMAINBED_DIR)"; \
	if [ ! -f "$$dir/domainbed/algorithms.py" ]; then \
	  echo "==> DomainBed not found in $$dir: cloning $(DOMAINBED_URL) at $(DOMAINBED_COMMIT)"; \
	  mkdir -p "$$(dirname "$$dir")"; \
	  if ! git clone -q "$(DOMAINBED_URL)" "$$dir" 2>/dev/null; then \
	    rm -rf "$$dir"; \
	    echo "DomainBed is not in $$dir and cannot be cloned (no network?). Do this, then rerun:"; \
	    echo "  git clone <a copy of github.com/facebookresearch/DomainBed> $$dir"; \
	    echo "  git -C $$dir checkout $(DOMAINBED_COMMIT)"; \
	    echo "or point DOMAINBED_DIR at an existing checkout: make $(MAKECMDGOALS) DOMAINBED_DIR=/path/to/DomainBed"; \
	    if [ -n "$(OPTIONAL)" ]; then echo "(continuing without DomainBed: its integration tests will be skipped)"; exit 0; fi; \
	    exit 1; \
	  fi; \
	fi; \
	head=$$(git -C "$$dir" rev-parse HEAD 2>/dev/null || echo unknown); \
	case "$$head" in $(DOMAINBED_COMMIT)*) echo "==> DomainBed at $$dir, commit $(DOMAINBED_COMMIT) (pinned)";; \
	  *) echo "==> DomainBed at $$dir is at $${head:0:7}; checking out the pinned $(DOMAINBED_COMMIT)"; \
	     git -C "$$dir" checkout -q $(DOMAINBED_COMMIT) || { echo "cannot check out $(DOMAINBED_COMMIT) in $$dir: commit or stash local changes, or fetch it"; exit 1; };; \
	esac; \
	site=$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])'); \
	echo "$$(cd "$$dir" && pwd)" > "$$site/_lpa_domainbed_domainbed.pth"; \
	echo "==> DomainBed importable from $(VENV) ($$site/_lpa_domainbed_domainbed.pth)"

test: setup
	@echo "==> running the tests: $(PY) -m pytest"
	@$(PY) -m pytest

demo: $(STAMP)
	@$(MAKE) --no-print-directory domainbed
	@echo "==> demo: leave-one-domain-out sweep on RotatedDigits through DomainBed's sweep, then tables"
	@$(PY) -m lpa_domainbed.tools.cli demo

sweep: $(STAMP)
	@$(MAKE) --no-print-directory domainbed
	@echo "==> sweep $(NAME): sweeps/$(NAME).toml -> python -m domainbed.scripts.sweep launch"
	@$(PY) -m lpa_domainbed.tools.cli sweep "$(NAME)" --data_dir="$(DATA_DIR)" --output_dir="$(OUTPUT_DIR)" $(if $(LAUNCHER),--launcher $(LAUNCHER)) $(if $(DRY_RUN),--dry_run) $(if $(RESTART_INCOMPLETE),--restart_incomplete)

sweep-dry-run:
	@$(MAKE) --no-print-directory sweep DRY_RUN=1

# COMPLETE_ONLY=1 leaves out jobs without 'done' or with truncated/empty results (default:
# their cells are marked); OUT_DIR=.. writes there instead of results/$(NAME)/.
tables: $(STAMP)
	@echo "==> tables $(NAME) from $(INPUT_DIR) -> $(or $(OUT_DIR),results/$(NAME))/"
	@$(PY) -m lpa_domainbed.tools.tables --input_dir $(INPUT_DIR) --name $(NAME) $(if $(OUT_DIR),--out_dir $(OUT_DIR)) $(if $(COMPLETE_ONLY),--complete_only)

# Python 3.10 (the oldest supported): the tests that need no torch, in their own venv with
# only what they import. Skipped, saying so, when no python3.10 is found.
PYTHON310 ?= $(shell for p in python3.10 $(HOME)/.pyenv/versions/3.10*/bin/python3.10; do $$p -c '' >/dev/null 2>&1 && { echo $$p; break; }; done)
VENV310 ?= .venv-py310
test-py310:
	@if [ -z "$(PYTHON310)" ]; then echo "==> test-py310 skipped: no working python3.10 (install one, or pass PYTHON310=/path/to/python3.10)"; exit 0; fi; \
	set -e; echo "==> Python 3.10 ($(PYTHON310)): tests marked 'not torch' in $(VENV310)"; \
	test -x $(VENV310)/bin/python || $(PYTHON310) -m venv $(VENV310); \
	$(VENV310)/bin/python -m pip install -q pytest pytest-timeout tomli numpy pandas tabulate; \
	$(VENV310)/bin/python -m pip install -q --no-deps .; \
	$(VENV310)/bin/python -m pytest -q -p no:cacheprovider -m "not torch" tests/test_sweeps.py tests/test_bad_inputs_tools.py \
	  tests/test_sweep_command.py tests/test_runinfo.py tests/test_registry.py

# The paper's analysis figures (1, 3a, 4a, 7) on RotatedDigits, about 10 minutes on 2 CPU cores;
# the in-process trainer is tested equal to domainbed.scripts.train (tests/test_figures.py);
# finished runs are cached in results/figures/cache/. More: FIGURES_ARGS="--steps 600 --trials 5".
figures: $(STAMP)
	@$(MAKE) --no-print-directory domainbed
	@echo "==> figures: DomainBed runs in-process, then PNG + CSV under results/figures/"
	@$(PY) -m lpa_domainbed.tools.figures $(FIGURES_ARGS)

# Each algorithm's training update vs ERM on DomainBed's default network (timm ResNet-50,
# 224 px, random weights built offline) and MNIST_CNN: time, the analytic floor of exact PGD,
# peak memory -> results/benchmarks/latest.{json,md}; targets in lpa_domainbed/tools/bench/config.py.
# Long on a CPU; BENCH_ARGS="--quick" for a smoke run, "--device cuda" on a GPU.
bench: $(STAMP)
	@$(MAKE) --no-print-directory domainbed
	@echo "==> bench: one process, interleaved rounds, medians -> results/benchmarks/"
	@$(PY) -m lpa_domainbed.tools.bench $(BENCH_ARGS)

clean-venv:
	@echo "==> removing $(VENV)"
	rm -rf $(VENV)

# On a machine with an NVIDIA GPU: every algorithm's tests, DomainBed's train script per
# algorithm on Debug224 and the benchmark (ResNet-50, PACS batch) on CUDA with sync debugging
# -> results/benchmarks/cuda.{md,json}. Without CUDA it says so and does nothing. It needs no
# set-up: PY=python3 runs it with an interpreter where torch, DomainBed and this package are
# importable (tools/device.sh prepares one on a bare GPU machine).
.PHONY: gpu-check
GPU_PY = $(if $(wildcard $(PY)),$(PY),python3)
gpu-check:
	@echo "==> gpu-check with $(GPU_PY)"
	@$(GPU_PY) -m lpa_domainbed.tools.gpu_check $(GPU_CHECK_ARGS)

# The submitit launcher against a real Slurm cluster: installs slurm-wlm and munge with apt-get
# where missing (as root), starts a throw-away single-node cluster in a temporary directory,
# runs the tests marked 'slurm' through DomainBed's sweep, and stops the cluster's daemons by
# pid at the end, also when a test fails. SLURM_REQUIRED=1 (CI) fails where a skip would be.
test-slurm: setup
	@echo "==> real-Slurm tests: a one-node cluster of our own, DomainBed's sweep with --command_launcher submitit"
	@dir=$$(mktemp -d -t lpa-slurm-XXXXXX); \
	trap 'for f in "$$dir"/*.pid; do [ -f "$$f" ] && kill "$$(cat "$$f")" 2>/dev/null; done; sleep 1; rm -rf "$$dir"' EXIT; \
	LPA_TEST_SLURM=1 LPA_TEST_SLURM_DIR="$$dir" LPA_TEST_SLURM_REQUIRED=$(SLURM_REQUIRED) \
	  $(PY) -m pytest -m slurm -p no:cacheprovider -rsP tests/test_slurm.py
