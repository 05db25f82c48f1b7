# Entry points: `make demo` (set up + run the demo) and `make test` (set up + run the tests); CI
# (.ci/run) also runs `make test-slow` and `make test-min-timm`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH := torch==2.14.1 torchvision==0.29.1
# the lowest timm that pyproject.toml admits: a second environment tests the code that uses timm with it
MIN_TIMM := $(shell sed -n 's/.*"timm>=\([0-9.]*\),.*/\1/p' pyproject.toml)
MIN_VENV := .venv-mintimm
TIMM_TESTS := tests/models tests/methods $(wildcard tests/eval/test_finetune*.py)

.PHONY: demo test test-slow test-min-timm install clean

$(BIN)/mimreg: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e ".[dev,slurm,viz,wandb,mlflow,datasets,tensorboard]"
	$(BIN)/python -c "import pacmap"  # numba compiles PaCMAP once (~40 s) here, not in the first demo
	touch $(BIN)/mimreg

install: $(BIN)/mimreg

demo: install
	$(BIN)/mimreg demo

test: install
	$(BIN)/python -m pytest -n 2 --dist loadfile  # two workers (the 2 cores), each test file on one (order: tests/conftest.py)

test-slow: install  # what `make test` leaves out (pytest's `slow` marker): most of the smoke matrix
	$(BIN)/python -m pytest -m slow -n 2 --dist loadfile

$(MIN_VENV)/bin/mimreg: pyproject.toml
	$(PY) -m venv $(MIN_VENV)
	$(MIN_VENV)/bin/pip install -q $(TORCH)
	$(MIN_VENV)/bin/pip install -q -e ".[dev]" "timm==$(MIN_TIMM)"
	touch $@

test-min-timm: $(MIN_VENV)/bin/mimreg
	$(MIN_VENV)/bin/python -c "import timm; assert timm.__version__ == '$(MIN_TIMM)', timm.__version__"
	$(MIN_VENV)/bin/python -m pytest -n 2 --dist loadfile $(TIMM_TESTS)

clean:
	rm -rf $(VENV) $(MIN_VENV) runs
