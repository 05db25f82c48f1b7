# Two entry points: `make demo` (set up + run the demo) and `make test` (set up + run the tests).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test install clean

$(BIN)/mimreg: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -e ".[dev,slurm,viz]"
	$(BIN)/python -c "import pacmap"  # numba compiles PaCMAP once (~40 s) here, not in the first demo
	touch $(BIN)/mimreg

install: $(BIN)/mimreg

demo: install
	$(BIN)/mimreg demo

test: install
	$(BIN)/python -m pytest -n 2 --dist loadfile  # two workers (the 2 cores), each test file on one

clean:
	rm -rf $(VENV) runs
