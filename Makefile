# `make study` and `make test` set everything up on a fresh Linux machine with Python 3.10+.
PYTHON  ?= python3
VENV    ?= .venv
PY      := $(VENV)/bin/python
PROFILE ?= full
TIER    ?= auto
ARGS    ?=
# PyTorch: the newest release the study is tested on (make test); its floor, 2.13, is tested by make test-floors.
TORCH_SPEC ?= torch==2.14.*
# torchvision: timm imports it (timm.layers imports torchvision.ops), and it must be the same build as torch, because
# its C++ ops link against torch's CPU or CUDA libraries: PyPI's torchvision (a CUDA build) beside a CPU-only torch
# dies at `import timm` ("operator torchvision::nms does not exist"). So both come in one pip command from one index,
# as PyTorch's own instructions have it, and never from a folder of local wheels (pip's find-links, PIP_FIND_LINKS=" "
# switches it off): such a folder may hold a +cpu torch that pip would pair with the index's CUDA torchvision.
# The index, by the driver (cudainfo.py extra): PyPI where the driver runs CUDA 13 or there is none (PyPI's x86_64
# wheels of both are the CUDA 13 build, which runs on the CPU too); PyTorch's CUDA 12 index on an R535-R570 driver,
# PyPI if that fails. TORCH_INDEX overrides both, e.g. https://download.pytorch.org/whl/cpu: the CPU-only pair,
# about 4 GB smaller, where that index can be reached.
TORCHVISION_SPEC ?= torchvision==0.29.*
TORCH_INDEX ?=
TORCH_CU12_INDEX ?= https://download.pytorch.org/whl/cu126
# $(call torch_pair_ok,PYTHON): whether torchvision's C++ ops run beside that torch
torch_pair_ok = $(1) -c "import torch, torchvision; torchvision.ops.nms(torch.zeros(1, 4), torch.zeros(1), 0.5)" \
	>/dev/null 2>&1
# pip byte-compiles what it installs (tens of seconds for torch on 2 cores); keep it: where PYTHONDONTWRITEBYTECODE is
# set (CI's machine) Python writes no .pyc, so with pip's --no-compile every process compiled every module it imported
# again, and make test took 1444 s against 1205 s.
# $(call torch_pair,PYTHON,PIP OPTIONS): install the pair (a mismatched one, as older venvs have, is replaced)
pip_pair = PIP_FIND_LINKS=" " $(1) -m pip install -q $(2) "$(TORCH_SPEC)" "$(TORCHVISION_SPEC)"
torch_pair = if $(1) -m pip show -q torch >/dev/null 2>&1 && ! $(call torch_pair_ok,$(1)); then \
	$(1) -m pip uninstall -q -y torch torchvision; fi; \
	if [ -n "$(TORCH_INDEX)" ]; then $(call pip_pair,$(1),$(2)) --index-url "$(TORCH_INDEX)" || exit 1; \
	elif [ "$$($(1) mvlib/tensorrt/cudainfo.py extra)" = rtx-cu12 ]; then \
	$(call pip_pair,$(1),$(2)) --index-url "$(TORCH_CU12_INDEX)" || $(call pip_pair,$(1),$(2)) || exit 1; \
	else $(call pip_pair,$(1),$(2)) || exit 1; fi; \
	$(call torch_pair_ok,$(1)) || { echo "make: torchvision's C++ ops do not load beside $$($(1) -m pip show torch \
	| grep ^Version); install torch and torchvision from one index (TORCH_INDEX=...), or remove $(1:/bin/python=) \
	and run make again" >&2; exit 1; }
HAS_GPU := $(shell nvidia-smi -L >/dev/null 2>&1 && echo 1)
# TensorRT-RTX builds every engine, GPU or not; PyPI has it for x86_64 Linux as a CUDA 12 and a CUDA 13 build.
# The driver decides which (cuDriverGetVersion; a stdlib-only script, as nothing is installed yet): rtx-cu13 on an
# R580+ driver or without a GPU, rtx-cu12 on an R535-R570 driver, where the CUDA 13 build would fail at run time.
RTX_EXTRA = $$($(PY) mvlib/tensorrt/cudainfo.py extra)
TRT_EXTRA = $$($(PY) mvlib/tensorrt/cudainfo.py extra trt)
# ONNX Runtime: onnxruntime-gpu of the driver's CUDA major where a driver is, else onnxruntime (ort-cu13/ort-cu12/ort-cpu).
ORT_EXTRA = $$($(PY) mvlib/tensorrt/cudainfo.py extra ort)
ORT_UNWANTED = $$($(PY) mvlib/tensorrt/cudainfo.py unwanted ort)
# The TensorRT flavour whose library folder `make lab` puts on the kernels' path (as in the study's parameters).
TRT_FLAVOUR ?= auto
ARCH := $(shell uname -m)
RTX_WHEELS := $(if $(filter x86_64,$(ARCH)),1)

.PHONY: study publish test lint env lab clean
# make exits 2 whenever a recipe fails, whatever the driver's own code (python -m mvlib.study --help): say that code.
DRIVER_EXIT = { rc=$$?; case $$rc in 1) why="the run failed";; 2) why="bad input or a refused publish";; \
	130|129|143) why="interrupted";; *) why="python -m mvlib.study --help lists its codes";; esac; \
	echo "make: python -m mvlib.study exited $$rc ($$why); make itself exits 2 on any failure" >&2; exit $$rc; }
study: $(VENV)/.installed
	$(PY) -m mvlib.study --profile $(PROFILE) --tier $(TIER) $(ARGS) || $(DRIVER_EXIT)

# Publishing is deliberate: the committed figures/ and data/results/ change only here, from a complete run of the
# full profile (`make publish`, or RUN=build/runs/full_mobilevit_xxs for another variant; ARGS=--publish-over to
# replace a published run of another GPU or a higher tier).
RUN ?= build/runs/$(PROFILE)
publish: $(VENV)/.installed
	$(PY) -m mvlib.study --publish-from $(RUN) $(ARGS) || $(DRIVER_EXIT)

test: $(VENV)/.installed
	$(PY) -m pytest -ra --durations=25 $(ARGS)

lint: $(VENV)/.installed
	$(PY) -m ruff check .

# Everything but the end-to-end runs of the notebooks (tests marked slow, or using the smoke_run fixture): for
# quick checks while editing. `make test` is the full suite, what CI runs.
.PHONY: test-fast
test-fast: $(VENV)/.installed
	$(PY) -m pytest -ra -m "not slow" $(ARGS)

env: $(VENV)/.installed

# The declared versions, tested (CI runs this after `make test`): the fast tests in a venv of their own with every
# dependency at the floor pyproject.toml gives it (constraints/floors.txt), then the ONNX-facing tests in the project's
# venv with the H200 image's onnx and onnxruntime (constraints/h200.txt) ahead of its own on PYTHONPATH. Each builds
# into a test build folder of its own (MVLIB_TEST_BUILD; tests ignore MVLIB_BUILD), so nothing made with other
# versions is reused.
FLOORS_VENV ?= build/venv-floors
PAIR_DIR    ?= build/h200-pair
PAIR_TESTS  ?= tests/test_fp8.py tests/test_quant_graph.py tests/silu/test_onnx_rewrite.py tests/test_accuracy.py \
               tests/test_autocast.py tests/test_precisions.py tests/test_versions.py
.PHONY: test-floors test-floors-venv test-h200-pair
test-floors: test-floors-venv test-h200-pair

test-floors-venv: export PYTHONWARNINGS = ignore:Editable installation
test-floors-venv: $(FLOORS_VENV)/.installed
# tests marked venv exercise the project's .venv through make (not the floors' venv; CI removes .venv before this)
	MVLIB_TEST_BUILD="$(abspath build/tests-floors)" $(FLOORS_VENV)/bin/python -m pytest -ra -m "not slow and not venv" \
		-p no:cacheprovider $(ARGS)

# the floors' pair: torch's floor and the torchvision of that release
$(FLOORS_VENV)/.installed: TORCH_SPEC = torch==2.13.0
$(FLOORS_VENV)/.installed: TORCHVISION_SPEC = torchvision==0.28.0
$(FLOORS_VENV)/.installed: pyproject.toml constraints/floors.txt
	rm -rf $(FLOORS_VENV)
	$(PYTHON) -m venv $(FLOORS_VENV)
	$(call torch_pair,$(FLOORS_VENV)/bin/python,-c constraints/floors.txt)
	$(FLOORS_VENV)/bin/python -m pip install -q -c constraints/floors.txt -e ".[dev,ort-cpu]"
	touch $@

# --no-deps: everything else is the project's venv's; --target keeps that venv as `make env` left it.
test-h200-pair: $(VENV)/.installed
	rm -rf $(PAIR_DIR)
	$(PY) -m pip install -q --no-deps --target $(PAIR_DIR) -r constraints/h200.txt
	PYTHONPATH="$(abspath $(PAIR_DIR))" MVLIB_TEST_BUILD="$(abspath $(PAIR_DIR))/tests" $(PY) -m pytest -ra -m "not slow" -p no:cacheprovider $(PAIR_TESTS) $(ARGS)

# setuptools announces every editable install with a banner about folders shadowing the package; it is for
# setuptools' own users, not this study's, and pip -q does not hide it.
$(VENV)/.installed: export PYTHONWARNINGS = ignore:Editable installation
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(call torch_pair,$(PY))
# onnxruntime and onnxruntime-gpu share their files: where the other one is installed, both go, then one comes back
	if $(PY) -m pip show -q $(ORT_UNWANTED) >/dev/null 2>&1; then $(PY) -m pip uninstall -q -y onnxruntime onnxruntime-gpu; fi
# one resolve for the project, its ONNX Runtime and (x86_64) TensorRT-RTX: a pip run per extra costs CI a minute
ifeq ($(RTX_WHEELS),1)
	$(PY) -m pip install -q -e ".[dev,$(ORT_EXTRA),$(RTX_EXTRA)]" "$(TORCH_SPEC)"
else
	$(PY) -m pip install -q -e ".[dev,$(ORT_EXTRA)]" "$(TORCH_SPEC)"
	@echo "NOTE: TensorRT-RTX has no wheels for $(ARCH); engines are built only where TensorRT is installed."
endif
ifeq ($(HAS_GPU),1)
	$(PY) -m pip install -q -e ".[$(TRT_EXTRA)]" "$(TORCH_SPEC)" || echo "WARNING: full TensorRT did not install (it comes from NVIDIA's index); TensorRT-RTX builds the engines, and runs them on compute capability 7.5, 8.6, 8.9 and 12.x."
endif
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $@

# JupyterLab rooted at the project, so figures/, data/results/ and build/runs/ are in its file browser, opened
# on notebooks/. As root (containers, cloud GPU machines) it adds --allow-root. Your own options go in LAB_ARGS:
#   make lab LAB_ARGS="--no-browser --port=8890"
LAB_ARGS ?=
LAB_AS_ROOT = $(if $(filter 0,$(shell id -u)),--allow-root)
# The kernels also get TensorRT-RTX's unversioned library name on their path (its parser dlopens it for plugins).
lab: $(VENV)/.installed
	d="$$($(PY) -m mvlib.tensorrt libdir $(TRT_FLAVOUR) 2>/dev/null)"; \
	LD_LIBRARY_PATH="$$d$${d:+$${LD_LIBRARY_PATH:+:}}$$LD_LIBRARY_PATH" \
	$(VENV)/bin/jupyter lab --ServerApp.root_dir="$(CURDIR)" --LabApp.default_url=/lab/tree/notebooks $(LAB_AS_ROOT) $(LAB_ARGS)

# Notebooks saved from JupyterLab carry outputs: this git filter strips them (and execution counts) when you
# `git add`, keeping cell ids; .gitattributes applies it to *.ipynb. Once per clone: make hooks
NBSTRIP = "$(abspath $(VENV))/bin/python" -m nbstripout --keep-id
.PHONY: hooks
hooks: $(VENV)/.installed
	git config filter.nbstripout-keepid.clean '$(NBSTRIP)'
	git config filter.nbstripout-keepid.smudge cat
	git config filter.nbstripout-keepid.required true
	git config diff.ipynb.textconv '$(NBSTRIP) -t'
	@echo "notebooks are stripped of outputs on git add (git config filter.nbstripout-keepid.*)"

clean:
	rm -rf build
