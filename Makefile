# Two commands set up everything: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test typecheck lint migrate clean video-client

# The LiveKit browser SDK the join page loads, served by the service itself: the pinned npm
# package, installed by `npm ci` (each tarball checked against the lockfile's integrity),
# then the bundle checked against the committed sha256 (the service checks it again).
VIDEO_CLIENT := rooms/client
VIDEO_CLIENT_STAMP := $(VIDEO_CLIENT)/node_modules/.installed
# The browser tests' tools (axe-core, Lighthouse): the root package.json's pinned devDependencies.
DEV_TOOLS_STAMP := node_modules/.installed

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/activate
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/activate
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@ $(VENV)/.installed

$(VIDEO_CLIENT_STAMP): $(VIDEO_CLIENT)/package.json $(VIDEO_CLIENT)/package-lock.json $(VIDEO_CLIENT)/livekit-client.sha256
	npm ci --prefix $(VIDEO_CLIENT) --ignore-scripts --no-audit --no-fund --loglevel=error
	cd $(VIDEO_CLIENT) && sha256sum --check --quiet livekit-client.sha256
	touch $@

video-client: $(VIDEO_CLIENT_STAMP)

$(DEV_TOOLS_STAMP): package.json package-lock.json
	npm ci --ignore-scripts --no-audit --no-fund --loglevel=error
	touch $@

run: $(VENV)/.installed $(VIDEO_CLIENT_STAMP)
	$(BIN)/autodoctor migrate
	$(BIN)/autodoctor serve $(if $(PORT),--port $(PORT),) $(if $(HOST),--host $(HOST),)

migrate: $(VENV)/.installed
	$(BIN)/autodoctor migrate

test: $(VENV)/.installed-dev $(VIDEO_CLIENT_STAMP) $(DEV_TOOLS_STAMP) typecheck
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

typecheck: $(VENV)/.installed-dev
	$(BIN)/mypy --strict core
	$(BIN)/mypy --follow-imports=silent bot channels billing rooms admin_web

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) data .pytest_cache $(VIDEO_CLIENT)/node_modules node_modules
