# The two commands of the README: `make run` and `make test`. Each creates or refreshes .venv
# from the project's own files first.
PYTHON ?= python3.11
VENV := .venv
STAMP := $(VENV)/.installed-stamp

.PHONY: run test venv lock clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

# The most complete part of the pipeline that exists: build the demo dataset with Ray Data, then
# pretrain the `small` preset on it with Ray Train (2 workers), logged and registered in MLflow.
DATASET := .longmix/datasets/demo

run: venv
	test -f $(DATASET)/manifest.json || $(VENV)/bin/longmix data build --spec demo --out $(DATASET)
	$(VENV)/bin/longmix train --dataset $(DATASET) --stage pretrain --steps 100 --batch-size 2 \
	  --checkpoint-every 50 --eval-every 25

test: venv
	$(VENV)/bin/python -m pytest

# Rewrite constraints.txt from the current environment (after changing pyproject.toml).
lock: venv
	$(VENV)/bin/python -m pip freeze --exclude-editable | sed 's/^torch==\(.*\)+cpu$$/torch==\1/' > constraints.txt

clean:
	rm -rf $(VENV) .longmix .pytest_cache
