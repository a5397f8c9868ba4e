# Two commands for a newcomer: `make demo` and `make test`. Both create .venv when it is missing
# and install the package with every extra.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TORCH := torch==2.14.1 torchvision==0.29.1

.PHONY: install demo test lint format bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e '.[all]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/sslvit demo --out runs/demo

test: $(STAMP)
	$(BIN)/ruff format --check sslvit tests bench
	$(BIN)/ruff check sslvit tests bench
	$(BIN)/pytest -q

lint: $(STAMP)
	$(BIN)/ruff format --check sslvit tests bench
	$(BIN)/ruff check sslvit tests bench

format: $(STAMP)
	$(BIN)/ruff format sslvit tests bench

bench: $(STAMP)
	$(BIN)/python -m bench.throughput
	$(BIN)/python -m bench.quality

clean:
	rm -rf runs .pytest_cache
