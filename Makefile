# make notebook   set up .venv and execute the notebook on the real data (writes it and its figures)
# make test       set up .venv and run every test, the notebook's outputs included (nbval)
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin

.PHONY: notebook test clean

$(BIN)/activate: requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt
	touch $(BIN)/activate

notebook: $(BIN)/activate
	$(BIN)/jupyter nbconvert --to notebook --execute --inplace chest_x_ray_diagnosis.ipynb

test: $(BIN)/activate
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) data/cache
