# make notebook   set up .venv and execute the notebook on the real data (writes it and its figures)
# make test       set up .venv and run every test, the notebook's outputs included (nbval)
# make bench      add the benchmark's extra candidates to .venv and write bench/RESULTS.md (about 25 min)
#                 (installs Debian's chromium for the browser tests of the web app if it is missing)
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
CHROMIUM := /usr/bin/chromium

.PHONY: notebook test bench student clean browser

$(BIN)/activate: requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt
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

test: $(BIN)/activate browser
	$(BIN)/python -m pytest

# Nothing else may use the CPU meanwhile: the figures are ratios, but a busy machine still skews them.
bench: $(BIN)/activate
	$(BIN)/python -m pip install --quiet -r bench/requirements.txt
	$(BIN)/python bench/run.py

# The learner's copy: solutions replaced by stubs, outputs cleared (student/chest_x_ray_diagnosis.ipynb).
student: $(BIN)/activate
	$(BIN)/python make_student_notebook.py

clean:
	rm -rf $(VENV) data/cache
