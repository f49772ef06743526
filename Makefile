# msae: two commands do everything on a fresh clone.
#   make reproduce   run every notebook at the default profile; figures into figures/
#   make reproduce-fast   the same without the baseline, scaling and ablation studies (14-16)
#   make test        lint, unit tests, then every notebook at the smoke profile under nbval
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
NOTEBOOKS := $(sort $(wildcard notebooks/[0-9][0-9]_*.ipynb))
# The studies that train the baselines, other widths and ablation arms (hours on a CPU at the
# default profile); reproduce-fast leaves them out.
STUDY_NOTEBOOKS := $(wildcard notebooks/14_*.ipynb notebooks/15_*.ipynb notebooks/16_*.ipynb)
SMOKE_DIR := build/smoke

.PHONY: reproduce reproduce-fast run-notebooks test lint unit-test notebook-test lab bench interop clean env

env: $(STAMP)

$(STAMP): requirements.txt requirements-nodeps.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.txt
	$(BIN)/pip install --quiet --no-deps -r requirements-nodeps.txt
	$(BIN)/pip install --quiet --no-deps -e .
	touch $@

# Each notebook runs in place, so the committed notebooks show the default profile's results;
# progress bars are then collapsed to their final state, as Jupyter shows them.
reproduce: $(STAMP)
	@$(MAKE) --no-print-directory run-notebooks RUN="$(NOTEBOOKS)"

reproduce-fast: $(STAMP)
	@$(MAKE) --no-print-directory run-notebooks RUN="$(filter-out $(STUDY_NOTEBOOKS),$(NOTEBOOKS))"

run-notebooks:
	@mkdir -p figures
	@for nb in $(RUN); do \
		echo "== $$nb"; \
		$(BIN)/papermill --no-progress-bar --log-level WARNING --cwd notebooks $$nb $$nb || exit 1; \
		$(BIN)/python -m msae.notebook_tidy $$nb || exit 1; \
	done

test: lint unit-test notebook-test

# lint only, in seconds: the rules are in pyproject.toml
lint: $(STAMP)
	$(BIN)/ruff check msae tests benchmarks notebooks

unit-test: $(STAMP)
	$(BIN)/python -m pytest tests

# Each notebook runs at the smoke profile under papermill; then nbval runs it again from scratch
# (its runs folder deleted; the converted model in cache/ is kept) and compares the outputs of the cells not tagged nbval-ignore-output:
# the key numbers each notebook prints must come out the same. See tests/README.md.
notebook-test: $(STAMP)
	@rm -rf $(SMOKE_DIR) && mkdir -p $(SMOKE_DIR)
	@for nb in $(NOTEBOOKS); do \
		echo "== papermill $$nb (smoke)"; \
		$(BIN)/papermill --no-progress-bar --log-level WARNING --cwd $(SMOKE_DIR) $$nb $(SMOKE_DIR)/$$(basename $$nb) \
			-p profile smoke -p figures_dir figures -p runs_dir runs -p cache_dir cache || exit 1; \
	done
	rm -rf $(SMOKE_DIR)/runs
	$(BIN)/python -m pytest -p no:cacheprovider --nbval --nbval-current-env \
		--nbval-sanitize-with tests/nbval_sanitize.cfg $(SMOKE_DIR)/*.ipynb

lab: $(STAMP)
	$(BIN)/jupyter lab notebooks

# The speed benchmark, beside the paper's own trainer (dictionary_learning 0.1.0), in a separate
# venv: dictionary_learning's dependencies pull a newer torch and torchvision, so the CPU torch
# is put back and torchvision (which fails to import beside it, and is not used) removed.
BENCH_VENV := .venv-bench
$(BENCH_VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/pip install --quiet --upgrade pip
	$(BENCH_VENV)/bin/pip install --quiet dictionary_learning==0.1.0
	$(BENCH_VENV)/bin/pip install --quiet torch==2.13.0 safetensors scipy tqdm
	$(BENCH_VENV)/bin/pip uninstall --quiet -y torchvision
	$(BENCH_VENV)/bin/pip install --quiet --no-deps -e .
	touch $@

bench: $(BENCH_VENV)/.installed
	$(BENCH_VENV)/bin/python benchmarks/train_speed.py

# Optional: load our saved SAEs with SAELens itself, in a separate venv (sae-lens's pins are its own).
interop: $(STAMP)
	test -x .venv-interop/bin/python || $(PYTHON) -m venv .venv-interop
	.venv-interop/bin/pip install --quiet torch==2.13.0 sae-lens
	.venv-interop/bin/pip install --quiet --no-deps -e .
	.venv-interop/bin/python tests/interop/saelens_check.py

clean:
	rm -rf build runs
