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

# The most complete part of the pipeline that exists: train the `small` preset on Python's own
# docs and standard library for a few minutes, save a verified checkpoint, report what it did.
run: venv
	$(VENV)/bin/longmix train --preset small --steps 200 --max-minutes 8

test: venv
	$(VENV)/bin/python -m pytest

# Rewrite constraints.txt from the current environment (after changing pyproject.toml).
lock: venv
	$(VENV)/bin/python -m pip freeze --exclude-editable | sed 's/^torch==\(.*\)+cpu$$/torch==\1/' > constraints.txt

clean:
	rm -rf $(VENV) .longmix .pytest_cache
