# Two commands on a fresh machine: `make demo` runs the main job, `make test` runs every test.
# Both install what they need: a .venv in the repo and redis-server where it is missing.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
ASSETS ?= $(or $(GATI_ASSETS),$(abspath ../shared/assets))
export GATI_ASSETS := $(ASSETS)

.PHONY: venv redis demo test lint proto proto-check bench clean

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements.txt
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $@

redis:
	@bash scripts/ensure-redis.sh

proto: venv
	bash scripts/gen-proto.sh gati/api

proto-check: venv
	bash scripts/gen-proto.sh --check gati/api

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: venv redis lint proto-check
	$(BIN)/python -m pytest -p no:cacheprovider -q -rs --durations=15 $(PYTEST_ARGS)

demo: venv redis
	$(BIN)/gati demo --assets $(ASSETS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build *.egg-info
