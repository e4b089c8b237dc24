# make notebook   set up .venv and execute the notebook on the real data (writes it and its figures)
# make lint       ruff: pycodestyle, pyflakes, import order (pyproject.toml); no reformatting
# make test       set up .venv, lint, then run every test, the notebook's outputs included (nbval)
#                 (installs Debian's chromium for the browser tests of the web app if it is missing)
# make test-fast  the tests without the slow ones, for the inner loop (`-m "not slow"`; add
#                 `and not data` in pytest to leave out the NIH data too)
# make train      train the shipped model's recipe (resumable: the same command continues after a stop;
#                 about 1.5 hours on 2 CPU cores), then `make export` writes it to models/
# make bench      add the benchmark's extra candidates to .venv and write bench/RESULTS.md (under 25 min;
#                 `.venv/bin/python -m bench.run --explore` measures the exploration candidates too)
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
CHROMIUM := /usr/bin/chromium

.PHONY: notebook lint test test-fast bench student clean browser train export

# The shipped model's recipe (models/README.md), two resumable runs under nice (so that they yield to
# other work): 30 epochs at 128 px then 6 at 224 (progressive resizing), AdamW with warm-up and cosine
# decay, weight averaging; then 8 more epochs at 224 px from its best weights, at a fifth of the rate,
# on images blurred by 1 px after resizing (which hides the size a file arrived at).
RUN := runs/cxr14-224-blur
RECIPE := --optimizer adamw --weight-decay 0.02 --schedule cosine --ema-momentum 0.998 \
	--early-stopping-patience 50 --rotation 0.025 --zoom 0.15 --shift 0.05 --verbose 2
train: $(BIN)/activate
	nice -n 10 $(BIN)/python train.py --output-dir runs/cxr14-224 --image-size 224 --early-image-size 128 \
		--early-epochs 30 --epochs 36 --learning-rate 1e-3 --warmup-epochs 2 $(RECIPE)
	nice -n 10 $(BIN)/python train.py --output-dir $(RUN) --image-size 224 --epochs 8 --learning-rate 2e-4 \
		--warmup-epochs 1 --initial-weights runs/cxr14-224/best.weights.h5 --blur 1.0 $(RECIPE)

export: $(BIN)/activate
	$(BIN)/python export_model.py $(RUN) --destination models/densenet121_cxr14 --float16

# The pinned requirements, then the project itself, editable (pyproject.toml): `import cxr` works from
# any directory.
$(BIN)/activate: requirements.txt requirements-dev.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $(BIN)/activate

notebook: $(BIN)/activate
	$(BIN)/jupyter nbconvert --to notebook --execute --inplace chest_x_ray_diagnosis.ipynb

# Debian's Chromium for tests/test_app_e2e.py (Playwright drives it; its own browser downloads are
# not used). Idempotent: does nothing when $(CHROMIUM) exists; as root or with sudo, else a warning.
browser:
	@if [ -x $(CHROMIUM) ]; then exit 0; fi; \
	if ! command -v apt-get >/dev/null 2>&1; then \
		echo "warning: no apt-get: install Chromium at $(CHROMIUM) to run the browser tests"; exit 0; fi; \
	if [ "$$(id -u)" -eq 0 ]; then SUDO=; elif command -v sudo >/dev/null 2>&1; then SUDO=sudo; else \
		echo "warning: not root and no sudo: apt-get install chromium to run the browser tests"; exit 0; fi; \
	$$SUDO apt-get update && \
	$$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium

lint: $(BIN)/activate
	$(BIN)/ruff check .

test: lint browser
	$(BIN)/python -m pytest

# The inner loop: the unit and data tests, without the slow ones (subprocesses, browser, notebook).
test-fast: $(BIN)/activate
	$(BIN)/python -m pytest tests -m "not slow"

# Nothing else may use the CPU meanwhile: the figures are ratios, but a busy machine still skews them.
bench: $(BIN)/activate
	$(BIN)/python -m pip install --quiet -r bench/requirements.txt
	$(BIN)/python -m bench.run

# The learner's copy: solutions replaced by stubs, outputs cleared (student/chest_x_ray_diagnosis.ipynb).
student: $(BIN)/activate
	$(BIN)/python make_student_notebook.py

clean:
	rm -rf $(VENV) data/cache
