# msae: two commands do everything on a fresh clone.
#   make reproduce   run every notebook at the default profile; figures into figures/
#   make reproduce-fast   the same without the baseline, scaling, ablation and scale-ladder studies (14-17)
#   make test        lint, unit tests, then every notebook at the smoke profile under nbval
#                    (in two lanes: see notebook-test below)
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
NOTEBOOKS := $(sort $(wildcard notebooks/[0-9][0-9]_*.ipynb))
# The studies that train the baselines, other widths, ablation arms and the scale ladder (hours on a CPU at the
# default profile); reproduce-fast leaves them out.
STUDY_NOTEBOOKS := $(wildcard notebooks/14_*.ipynb notebooks/15_*.ipynb notebooks/16_*.ipynb notebooks/17_*.ipynb)
SMOKE_DIR := build/smoke
# nbval's re-run of the smoke notebooks, in a runs folder of its own
CHECK_DIR := build/smoke-check
# make test runs two processes at a time on this 2-core machine's budget: one thread each
ONE_THREAD := OMP_NUM_THREADS=1 MKL_NUM_THREADS=1

.PHONY: reproduce reproduce-fast run-notebooks test lint unit-test notebook-test notebook-lanes lab bench interop clean env

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

# One after another even under `make -j`: the unit tests and the notebooks each use both cores.
test: $(STAMP)
	@$(MAKE) --no-print-directory lint
	@$(MAKE) --no-print-directory unit-test
	@$(MAKE) --no-print-directory notebook-test

# lint only, in seconds: the rules are in pyproject.toml
lint: $(STAMP)
	$(BIN)/ruff check msae tests benchmarks notebooks

# Two pytest-xdist workers of one thread each (two threads each would oversubscribe the two
# cores); tests/conftest.py hands both the one seed it prints.
unit-test: $(STAMP)
	$(ONE_THREAD) $(BIN)/python -m pytest -p no:cacheprovider -n 2 tests

# Each notebook runs at the smoke profile under papermill into $(SMOKE_DIR); then nbval runs the
# output again from scratch, in $(CHECK_DIR) with a runs folder of its own (only the converted
# model in cache/ is shared, by a symlink), and compares the outputs of the cells not tagged
# nbval-ignore-output: the key numbers each notebook prints must come out the same. See
# tests/README.md.
#
# Two lanes (make -j2), one thread each: notebook N's nbval check runs beside notebook N+1's
# papermill run. A runs folder is used by one notebook at a time (run_sweep locks the sweep's
# run folders even to reload them, and a second process is refused, not made to wait; and it
# rewrites results.json whole), so in each folder the notebooks that read or write the sweep
# (02-12, 14-17) run one after another in number order: 02 trains the sweep, 14 the baselines
# that 15 also loads. 01 (the toy model, runs/toy only) and 13 (no runs folder) run whenever a
# lane is free. --output-sync prints each notebook's lines together once it is done; make stops
# at the first failure and exits non-zero.
FREE_NOTEBOOKS := $(notdir $(wildcard notebooks/01_*.ipynb notebooks/13_*.ipynb))
CHAINED_NOTEBOOKS := $(filter-out $(FREE_NOTEBOOKS),$(notdir $(NOTEBOOKS)))
SMOKE_NOTEBOOKS := $(addprefix $(SMOKE_DIR)/,$(notdir $(NOTEBOOKS)))
CHECKED_NOTEBOOKS := $(addprefix $(CHECK_DIR)/,$(notdir $(NOTEBOOKS:.ipynb=.passed)))

notebook-test: $(STAMP)
	@rm -rf $(SMOKE_DIR) $(CHECK_DIR) && mkdir -p $(SMOKE_DIR) $(CHECK_DIR)
	@ln -s $(abspath $(SMOKE_DIR))/cache $(CHECK_DIR)/cache
	@$(MAKE) --no-print-directory -j2 --output-sync=target notebook-lanes

# Internal to notebook-test, which first empties both folders.
notebook-lanes: $(CHECKED_NOTEBOOKS)
	@echo "all $(words $(CHECKED_NOTEBOOKS)) notebooks ran at smoke and passed nbval"

$(SMOKE_DIR)/%.ipynb: notebooks/%.ipynb
	@start=$$(date +%s); echo "== papermill $< (smoke)"; \
	$(ONE_THREAD) $(BIN)/papermill --no-progress-bar --log-level WARNING --cwd $(SMOKE_DIR) $< $@ \
		-p profile smoke -p figures_dir figures -p runs_dir runs -p cache_dir cache \
	&& echo "   papermill $* done in $$(( $$(date +%s) - start )) s"

$(CHECK_DIR)/%.passed: $(SMOKE_DIR)/%.ipynb
	@start=$$(date +%s); echo "== nbval $(CHECK_DIR)/$*.ipynb"; \
	cp $< $(CHECK_DIR)/$*.ipynb \
	&& $(ONE_THREAD) $(BIN)/python -m pytest -p no:cacheprovider --nbval --nbval-current-env \
		--nbval-sanitize-with tests/nbval_sanitize.cfg $(CHECK_DIR)/$*.ipynb \
	&& touch $@ && echo "   nbval $* done in $$(( $$(date +%s) - start )) s"

# kept after the run (as papermill left them: a failed notebook shows its error)
.SECONDARY: $(SMOKE_NOTEBOOKS)

# The order within each folder: each chained notebook after the one before it.
define after_previous
$(if $(PREVIOUS),$(SMOKE_DIR)/$(1): $(SMOKE_DIR)/$(PREVIOUS)
$(CHECK_DIR)/$(1:.ipynb=.passed): $(CHECK_DIR)/$(PREVIOUS:.ipynb=.passed))
PREVIOUS := $(1)
endef
PREVIOUS :=
$(foreach nb,$(CHAINED_NOTEBOOKS),$(eval $(call after_previous,$(nb))))

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
