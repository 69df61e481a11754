# Two entry points: `make demo` (install + segment a real case) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DATA ?= ../shared/data/prostate
DEMO_CASE ?= $(DATA)/Prostate158/P158-020.nii.gz

.PHONY: install demo test evaluate

$(BIN)/samprostate: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

install: $(BIN)/samprostate

demo: install
	mkdir -p demo-output
	$(BIN)/samprostate segment $(DEMO_CASE) -o demo-output/prostate.nii.gz \
		--boxes-out demo-output/boxes.json --overlay demo-output/overlay.png --overwrite

evaluate: install
	$(BIN)/samprostate evaluate --data $(DATA) --split unseen

test: install
	$(BIN)/ruff check SAMProstateSDG tests scripts
	$(BIN)/mypy
	$(BIN)/python -m pytest -q --durations=40
