# msae: two commands do everything on a fresh clone.
#   make reproduce   run every notebook at the default profile; figures into figures/
#   make test        unit tests, then every notebook at the smoke profile under nbval
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
NOTEBOOKS := $(sort $(wildcard notebooks/[0-9][0-9]_*.ipynb))
SMOKE_DIR := build/smoke

.PHONY: reproduce test unit-test notebook-test lab bench clean env

env: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.txt
	$(BIN)/pip install --quiet --no-deps -e .
	touch $@

# Each notebook runs in place, so the committed notebooks show the default profile's results.
reproduce: $(STAMP)
	@mkdir -p figures
	@for nb in $(NOTEBOOKS); do \
		echo "== $$nb"; \
		$(BIN)/papermill --cwd notebooks --log-level WARNING $$nb $$nb || exit 1; \
	done

test: unit-test notebook-test

unit-test: $(STAMP)
	$(BIN)/python -m pytest tests

# Each notebook is executed at the smoke profile by papermill, then re-executed by nbval,
# which compares the cells' outputs (see tests/README.md for what is compared).
notebook-test: $(STAMP)
	@rm -rf $(SMOKE_DIR) && mkdir -p $(SMOKE_DIR)
	@for nb in $(NOTEBOOKS); do \
		name=$$(basename $$nb); \
		$(BIN)/papermill --cwd notebooks --log-level WARNING $$nb $(SMOKE_DIR)/$$name \
			-p profile smoke -p figures_dir ../$(SMOKE_DIR)/figures -p runs_dir ../$(SMOKE_DIR)/runs || exit 1; \
	done
	cd notebooks && ../$(BIN)/python -m pytest -p no:cacheprovider --nbval ../$(SMOKE_DIR) \
		--nbval-sanitize-with ../tests/nbval_sanitize.cfg --nbval-current-env

lab: $(STAMP)
	$(BIN)/jupyter lab notebooks

bench: $(STAMP)
	$(BIN)/python benchmarks/matryoshka_step.py

clean:
	rm -rf build runs
