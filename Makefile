# The README's commands. Each target sets up what it needs (a venv in .venv) on a fresh clone.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: demo test lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# One install for everything: the CLI, the trainer stack and the test tools.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

demo: $(VENV)/.installed
	$(BIN)/launcher demo

test: $(VENV)/.installed
	$(BIN)/ruff check launcher trainer tests bench
	$(BIN)/python -m pytest -q -ra --durations=10

lint: $(VENV)/.installed
	$(BIN)/ruff check launcher trainer tests bench

bench: $(VENV)/.installed
	$(BIN)/python bench/render_startup.py
	$(BIN)/python bench/staging.py
	$(BIN)/python bench/trainer_costs.py
	$(BIN)/python bench/finetune_vs_scratch.py
	$(BIN)/python bench/keras_finetune_vs_scratch.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
