# HealthLedger: the two commands a newcomer needs are `make run` and `make test` (see README.md).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
TEST_WORKERS ?= 2   # pytest-xdist processes for `make test` (tests wait on servers and nodes as much as they compute);
                    # loadfile: a file's tests run in one process, in order (module worlds, ordered scenarios)

.PHONY: run test install dev-install node-tools system-deps lint bench clean

run: install node-tools            ## install into .venv and serve on embedded defaults
	$(BIN)/healthledger serve

test: dev-install node-tools system-deps   ## install dev dependencies (and chromium) and run the whole suite
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile

$(VENV)/.created:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	touch $@

$(VENV)/.installed: $(VENV)/.created pyproject.toml
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.dev-installed: $(VENV)/.installed pyproject.toml
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

install: $(VENV)/.installed
dev-install: $(VENV)/.dev-installed

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

node-tools: node_modules/.installed

system-deps:                       ## Debian packages the tests use (chromium for browser tests), if missing
	@bash scripts/system-deps.sh

lint: dev-install
	$(BIN)/ruff check healthledger zk fhir_adapters tests benchmarks
	$(BIN)/mypy --strict zk fhir_adapters
	$(BIN)/mypy healthledger

bench: dev-install node-tools     ## every benchmark (installs wrk if missing), then one summary table against the targets
	@bash scripts/system-deps.sh wrk
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf $(VENV) node_modules var
