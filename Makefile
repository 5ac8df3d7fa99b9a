# Two commands set up everything: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test typecheck lint migrate clean

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/activate
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/activate
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@ $(VENV)/.installed

run: $(VENV)/.installed
	$(BIN)/autodoctor migrate
	$(BIN)/autodoctor serve $(if $(PORT),--port $(PORT),) $(if $(HOST),--host $(HOST),)

migrate: $(VENV)/.installed
	$(BIN)/autodoctor migrate

test: $(VENV)/.installed-dev typecheck
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

typecheck: $(VENV)/.installed-dev
	$(BIN)/mypy --strict core
	$(BIN)/mypy --follow-imports=silent bot channels billing rooms admin_web

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) data .pytest_cache
