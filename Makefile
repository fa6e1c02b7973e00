# infer-lab: the two commands are `make lab` and `make test`.
#
# Both create .venv on first use and install the package (editable) with its extras.
# The install is recorded in a stamp file inside .venv that depends on pyproject.toml
# and this Makefile, so a second run with nothing changed installs nothing.
#
# torch is installed on its own, before the package, so that pip never resolves the
# package's torch range to a multi-GB CUDA build on a machine without a GPU:
#   TORCH_SPEC   what to install (default torch==2.13.0; pip's local wheel here is a CPU build)
#   TORCH_INDEX  a wheel index for torch alone, e.g. PyTorch's CPU or CUDA index
# Changing either (on the command line or in the environment) reinstalls torch.

PYTHON      ?= python3
VENV        ?= .venv
TORCH_SPEC  ?= torch==2.13.0
TORCH_INDEX ?=
EXTRAS      ?= lab,dev
LAB_ARGS    ?=
PYTEST_ARGS ?=

VENV_PY := $(VENV)/bin/python
PIP     := $(VENV_PY) -m pip
STAMP   := $(VENV)/.infer-lab-installed
# One stamp per torch choice: a new TORCH_SPEC/TORCH_INDEX means a new stamp, so a reinstall.
TORCH_STAMP := $(VENV)/.torch-$(shell printf '%s|%s' '$(TORCH_SPEC)' '$(TORCH_INDEX)' | cksum | cut -d' ' -f1)
# jupyter refuses to start as root unless told it may.
ROOT_FLAG := $(if $(filter 0,$(shell id -u)),--allow-root)

export JUPYTER_PLATFORM_DIRS := 1

.DEFAULT_GOAL := help
.PHONY: help lab test bench setup clean distclean

help:  ## this list
	@echo "infer-lab"
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'
	@echo "Variables: PYTHON=$(PYTHON) TORCH_SPEC=$(TORCH_SPEC) TORCH_INDEX=$(TORCH_INDEX) LAB_ARGS= PYTEST_ARGS="

lab: $(STAMP)  ## set up .venv if needed, then open JupyterLab on labs/
	$(VENV)/bin/jupyter lab labs/ --ip=127.0.0.1 $(ROOT_FLAG) $(LAB_ARGS)

# One pytest run over the unit tests and the notebooks (nbval runs every cell of every
# lab at the CI scale; --nbval-lax checks outputs only where a cell asks for it).
test: $(STAMP)  ## set up .venv if needed, then run all tests, notebooks included
	INFER_LAB_SCALE=ci $(VENV_PY) -m pytest -q -p no:cacheprovider -r fEs \
	  --timeout=900 --nbval-lax --nbval-current-env --nbval-cell-timeout=600 \
	  tests labs $(PYTEST_ARGS)

bench: $(STAMP)  ## decode benchmark on the zoo models (add ARGS="--json out.json")
	$(VENV_PY) -m infer_lab.bench decode $(ARGS)

setup: $(STAMP)  ## only create .venv and install

$(VENV_PY):
	@command -v $(PYTHON) >/dev/null 2>&1 || { \
	  echo "error: '$(PYTHON)' not found; install Python >= 3.10 or run: make PYTHON=/path/to/python3.11 ..." >&2; exit 1; }
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 10))' || { \
	  echo "error: infer-lab needs Python >= 3.10, but $(PYTHON) is $$($(PYTHON) --version 2>&1)." >&2; \
	  echo "       Run: make PYTHON=/path/to/python3.11 ..." >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)

$(TORCH_STAMP): | $(VENV_PY)
	$(PIP) install "$(TORCH_SPEC)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	@command -v nvidia-smi >/dev/null 2>&1 || $(VENV_PY) -W ignore -c 'import sys, torch; sys.exit(torch.version.cuda is not None)' || { \
	  echo "note: this machine has no GPU but pip installed a CUDA build of torch (several GB)."; \
	  echo "      To get a CPU build instead: make distclean, then pass TORCH_INDEX=<PyTorch's CPU index> (README)."; }
	rm -f $(VENV)/.torch-*
	@touch $@

$(STAMP): pyproject.toml Makefile $(TORCH_STAMP)
	$(PIP) install -e ".[$(EXTRAS)]"
	@$(VENV_PY) -c 'import torch, infer_lab; print(f"infer_lab {infer_lab.__version__} with torch {torch.__version__} (CUDA: {torch.cuda.is_available()})")'
	@touch $@

clean:  ## remove caches and build files (keeps .venv and runs/)
	rm -rf build dist *.egg-info .pytest_cache .hypothesis
	find . -path ./.venv -prune -o -path ./runs -prune -o \
	  \( -name __pycache__ -o -name .ipynb_checkpoints \) -type d -print0 | xargs -0 rm -rf

distclean: clean  ## also remove .venv (the next make reinstalls everything)
	rm -rf $(VENV)
