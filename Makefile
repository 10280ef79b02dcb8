# `make study` and `make test` set everything up on a fresh Linux machine with Python 3.10+.
PYTHON  ?= python3
VENV    ?= .venv
PY      := $(VENV)/bin/python
PROFILE ?= full
TIER    ?= auto
ARGS    ?=
# PyTorch is pinned to the release the study was developed on; override to use another.
TORCH_SPEC ?= torch==2.13.*
HAS_GPU := $(shell nvidia-smi -L >/dev/null 2>&1 && echo 1)

.PHONY: study test env lab clean
study: $(VENV)/.installed
	$(PY) -m mvlib.study --profile $(PROFILE) --tier $(TIER) $(ARGS)

test: $(VENV)/.installed
	$(PY) -m pytest -ra $(ARGS)

env: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[dev]" "$(TORCH_SPEC)"
ifeq ($(HAS_GPU),1)
	$(PY) -m pip install -q -e ".[trt]" "$(TORCH_SPEC)" || echo "WARNING: TensorRT did not install; the study runs at the gpu tier (engines are skipped)."
endif
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $@

lab: $(VENV)/.installed
	$(VENV)/bin/jupyter lab notebooks/

clean:
	rm -rf build
