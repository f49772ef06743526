# msae: two commands do everything on a fresh clone.
#   make reproduce   run every notebook at the default profile; figures into figures/
#                    (PROFILE=paper|smoke: into build/<profile>/; NPROC=N: train on N processes first)
#   make reproduce-fast   the same without the baseline, scaling, ablation, scale-ladder and toy-depth studies
#                    (14-17, 19)
#   make plan        what a run at PROFILE on NPROC processes trains, needs and costs (no model loaded)
#   make test        lint, then the unit tests and every notebook at the smoke profile under nbval,
#                    as jobs of one make -j2 (see notebook-test below)
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
NOTEBOOKS := $(sort $(wildcard notebooks/[0-9][0-9]_*.ipynb))
# The studies that train the baselines, other widths, ablation arms and the scale ladder (hours on a CPU at the
# default profile); reproduce-fast leaves them out.
STUDY_NOTEBOOKS := $(wildcard notebooks/14_*.ipynb notebooks/15_*.ipynb notebooks/16_*.ipynb notebooks/17_*.ipynb \
	notebooks/19_*.ipynb)
SMOKE_DIR := build/smoke
# nbval's re-run of the smoke notebooks, in a runs folder of its own
CHECK_DIR := build/smoke-check
SMOKE_NOTEBOOKS := $(addprefix $(SMOKE_DIR)/,$(notdir $(NOTEBOOKS)))
CHECKED_NOTEBOOKS := $(addprefix $(CHECK_DIR)/,$(notdir $(NOTEBOOKS:.ipynb=.passed)))
# make test runs two processes at a time on this 2-core machine's budget: one thread each
ONE_THREAD := OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
comma := ,

.PHONY: reproduce reproduce-fast run-notebooks plan test browser lint unit-test unit-test-job test-jobs notebook-test notebook-folders \
	notebook-jobs lab bench interop toy-reference clean env

env: $(STAMP)

$(STAMP): requirements.txt requirements-nodeps.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.txt
	$(BIN)/pip install --quiet --no-deps -r requirements-nodeps.txt
	$(BIN)/pip install --quiet --no-deps -e .
	touch $@

# PROFILE=default|paper|smoke picks the profile. At default each notebook runs in place, so the
# committed notebooks show the default profile's results; another profile's notebooks and
# figures go to build/<profile>/. Progress bars are then collapsed to their final state, as
# Jupyter shows them. NPROC=N (N > 1) first runs the training the notebooks read on N processes
# (torchrun: the ranks share the harvesting and the SAEs; msae.experiments.pipeline), then the
# notebooks, which find it done. `make plan PROFILE=paper NPROC=8` prints what a run does and
# costs, loading no model.
PROFILE ?= default
NPROC ?= 1
ifeq ($(PROFILE),default)
OUT_DIR := notebooks
FIGURES_DIR := figures
PROFILE_ARGS :=
else
OUT_DIR := build/$(PROFILE)
FIGURES_DIR := $(OUT_DIR)/figures
PROFILE_ARGS := -p profile $(PROFILE) -p figures_dir ../$(FIGURES_DIR)
endif

reproduce: $(STAMP) browser
	@$(MAKE) --no-print-directory run-notebooks RUN="$(NOTEBOOKS)" TRAIN_FLAGS="--studies --ladder"

reproduce-fast: $(STAMP) browser
	@$(MAKE) --no-print-directory run-notebooks RUN="$(filter-out $(STUDY_NOTEBOOKS),$(NOTEBOOKS))" TRAIN_FLAGS=

run-notebooks:
	@mkdir -p $(OUT_DIR) $(FIGURES_DIR)
	@if [ "$(NPROC)" -gt 1 ]; then \
		echo "== training on $(NPROC) processes (profile $(PROFILE))"; \
		$(BIN)/torchrun --standalone --nproc_per_node $(NPROC) -m msae.experiments.pipeline --profile $(PROFILE) \
			$(TRAIN_FLAGS) || exit 1; \
	fi
	@for nb in $(RUN); do \
		out=$(OUT_DIR)/$$(basename $$nb); echo "== $$nb -> $$out"; \
		$(BIN)/papermill --no-progress-bar --log-level WARNING --cwd notebooks $$nb $$out $(PROFILE_ARGS) || exit 1; \
		$(BIN)/python -m msae.notebook_tidy $$out || exit 1; \
	done

plan: $(STAMP)
	@$(BIN)/python -m msae.experiments.pipeline --profile $(PROFILE) --nproc $(NPROC) --studies --ladder --dry-run

# Lint first (seconds); then the unit tests and the notebooks share the two cores as jobs of
# one `make -j2` (see notebook-test): the unit tests on one worker fill the second core while the
# smoke sweep trains.
test: $(STAMP)
	@$(MAKE) --no-print-directory lint
	@$(MAKE) --no-print-directory browser
	@$(MAKE) --no-print-directory notebook-folders
	@$(MAKE) --no-print-directory -j2 --output-sync=target test-jobs
	@echo "make test: lint, unit tests and $(words $(CHECKED_NOTEBOOKS)) notebooks passed"

# The latent browser's test (tests/test_browser.py) and notebook 18's screenshots drive a headless
# Chromium: installed from Debian's packages when missing and possible (root and apt-get), else
# that test is skipped and says so, and the notebook says it took no screenshot.
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || { \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
			echo "== installing chromium (Debian's package) for the latent browser"; \
			apt-get install -y -qq --no-install-recommends chromium >/dev/null 2>&1 \
			|| { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq --no-install-recommends chromium >/dev/null 2>&1; } \
			|| echo "   could not install chromium: the browser test will be skipped"; \
		else echo "== no chromium, and no root or apt-get to install it: the browser test will be skipped"; fi; }

# lint only, in seconds: the rules are in pyproject.toml
lint: $(STAMP)
	$(BIN)/ruff check msae tests benchmarks notebooks

# The unit tests alone, on two pytest-xdist workers of one thread each (two threads each would
# oversubscribe the two cores); tests/conftest.py hands both the one seed it prints.
unit-test: $(STAMP)
	$(ONE_THREAD) $(BIN)/python -m pytest -p no:cacheprovider -n 2 tests

# Internal to test: the unit tests as one job (one worker, one thread) beside the notebooks'.
# Listed first after the sweep, so that make starts them with it.
test-jobs: $(SMOKE_DIR)/$(notdir $(wildcard notebooks/02_*.ipynb)) unit-test-job $(CHECKED_NOTEBOOKS)

unit-test-job: $(STAMP)
	@start=$$(date +%s); echo "== unit tests (one worker)"; \
	$(ONE_THREAD) $(BIN)/python -m pytest -p no:cacheprovider -q tests \
	&& echo "   unit tests done in $$(( $$(date +%s) - start )) s"

# Every notebook at the smoke profile, twice. papermill runs it into $(SMOKE_DIR); then nbval
# runs that output again in $(CHECK_DIR) and compares the outputs of the cells not tagged
# nbval-ignore-output: the key numbers each notebook prints must come out the same. The second
# run trains and evaluates every SAE again from scratch, in a runs folder of its own; it shares
# with the first only what the model computes and nothing trains: the converted model (cache/)
# and the activations of the text, letters and stories (runs/activations, runs/eval_data), by
# symlinks. See tests/README.md.
#
# Both runs are jobs of one `make -j2`, one thread each. Finished runs are read under shared
# locks and results.json is merged under a lock, so notebooks that load the sweep run side by
# side; a notebook waits only for what it needs made first, in its own folder (NEEDS below).
# --output-sync prints each notebook's lines together once it is done; make stops at the first
# failure and exits non-zero.
notebook-test: $(STAMP)
	@$(MAKE) --no-print-directory notebook-folders
	@$(MAKE) --no-print-directory -j2 --output-sync=target notebook-jobs
	@echo "all $(words $(CHECKED_NOTEBOOKS)) notebooks ran at smoke and passed nbval"


# Internal: empty both folders; the second's model cache and activation caches are the first's.
notebook-folders:
	@rm -rf $(SMOKE_DIR) $(CHECK_DIR)
	@mkdir -p $(SMOKE_DIR)/cache $(SMOKE_DIR)/runs/activations $(SMOKE_DIR)/runs/eval_data $(CHECK_DIR)/runs
	@ln -s $(abspath $(SMOKE_DIR))/cache $(CHECK_DIR)/cache
	@ln -s $(abspath $(SMOKE_DIR))/runs/activations $(CHECK_DIR)/runs/activations
	@ln -s $(abspath $(SMOKE_DIR))/runs/eval_data $(CHECK_DIR)/runs/eval_data

notebook-jobs: $(SMOKE_DIR)/$(notdir $(wildcard notebooks/02_*.ipynb)) $(CHECKED_NOTEBOOKS)

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

# What a notebook needs made first, in the same folder: "N: M..." runs N after M. 02 trains the
# sweep every later language-model notebook loads (01, the toy model, and 13, no model, need
# nothing); 07 scores absorption on the sweep's SAEs, which 12 and 15-17 read back; 08 collects
# the story activations that 09 and 11 use, and 09 scores the concepts 11 reads back; 14 trains
# the baselines that 15 loads; 18 reads the sweep's Matryoshka SAE and its prefix-matched BatchTopK SAEs.
NEEDS := 03:02 04:02 05:02 06:02 07:02 08:02 09:08 10:02 11:09 12:07 14:02 15:07,14 16:07 17:07 18:02
notebook = $(notdir $(wildcard notebooks/$(1)_*.ipynb))
define needs_rule
$(SMOKE_DIR)/$(call notebook,$(1)): $(foreach m,$(2),$(SMOKE_DIR)/$(call notebook,$(m)))
$(CHECK_DIR)/$(basename $(call notebook,$(1))).passed: $(foreach m,$(2),$(CHECK_DIR)/$(basename $(call notebook,$(m))).passed)
endef
$(foreach pair,$(NEEDS),$(eval $(call needs_rule,$(word 1,$(subst :, ,$(pair))),$(subst $(comma), ,$(word 2,$(subst :, ,$(pair)))))))

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

# Optional: the paper authors' reference toy code (noanabeshima/matryoshka-saes, MIT; not part of
# msae) at a pinned commit, which notebook 19 runs beside msae's toy SAEs on the same trees,
# seeds and batches; then notebook 19 again, in place (its results are cached under runs/).
REFERENCE_COMMIT := 7b80f5fe36598f43f3181c5466a0365c7ce07807
toy-reference: $(STAMP)
	@test -f build/reference/sae.py || { rm -rf build/reference && \
		git clone --quiet https://github.com/noanabeshima/matryoshka-saes build/reference && \
		git -C build/reference checkout --quiet $(REFERENCE_COMMIT); }
	@$(MAKE) --no-print-directory run-notebooks RUN="$(wildcard notebooks/19_*.ipynb)"

# Optional: load our saved SAEs with SAELens itself, in a separate venv (sae-lens's pins are its own).
interop: $(STAMP)
	test -x .venv-interop/bin/python || $(PYTHON) -m venv .venv-interop
	.venv-interop/bin/pip install --quiet torch==2.13.0 sae-lens
	.venv-interop/bin/pip install --quiet --no-deps -e .
	.venv-interop/bin/python tests/interop/saelens_check.py

clean:
	rm -rf build runs
