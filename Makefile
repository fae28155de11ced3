# The two commands of the README: `make run` and `make test`. Each creates or refreshes .venv
# from the project's own files first.
PYTHON ?= python3.11
VENV := .venv
STAMP := $(VENV)/.installed-stamp

.PHONY: run down test venv lock clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

# The whole pipeline on the embedded defaults: data (Ray Data) -> train (Ray Train) -> eval ->
# gate -> approval (a named demo reviewer) -> blue/green deploy on local Ray Serve, as Prefect
# flows logged to MLflow; ends with a summary, the UIs' URLs and a curl for the endpoint.
run: venv
	$(VENV)/bin/longmix run

# Stop what `make run` left running (the endpoint, the Prefect server, the MLflow UI).
down: venv
	$(VENV)/bin/longmix down

# two test files at a time (pytest-xdist): each file's module fixtures stay in one process
test: venv
	$(VENV)/bin/python -m pytest -n 2 --dist loadfile

# Rewrite constraints.txt from the current environment (after changing pyproject.toml).
lock: venv
	$(VENV)/bin/python -m pip freeze --exclude-editable | sed 's/^torch==\(.*\)+cpu$$/torch==\1/' > constraints.txt

clean:
	rm -rf $(VENV) .longmix .pytest_cache
