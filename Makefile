# The two commands a newcomer needs: `make run` and `make test`.
# Both create their virtualenvs from the pinned requirements on first use.
PYTHON       ?= python3
VENV         ?= .venv
CHECKOV_VENV ?= .venv-checkov
PY           := $(VENV)/bin/python

.PHONY: run test tfcheck audit bench clean

run: $(VENV)/.installed
	$(PY) -m dev.run

test: $(VENV)/.installed $(CHECKOV_VENV)/.installed
	CHECKOV_BIN=$(CHECKOV_VENV)/bin/checkov $(PY) -m pytest $(PYTEST_ARGS)

# Only the offline Terraform checks (fmt, checkov, provider schema, contracts).
tfcheck: $(VENV)/.installed $(CHECKOV_VENV)/.installed
	CHECKOV_BIN=$(CHECKOV_VENV)/bin/checkov $(PY) -m pytest tests/test_terraform.py $(PYTEST_ARGS)

# The request path beside its floor; writes the tables into BENCHMARKS.md.
bench: $(VENV)/.installed
	$(PY) -m bench.run

# Known vulnerabilities in what the function deploys. Needs PyPI's JSON API
# (or OSV: add --vulnerability-service osv), which these machines cannot reach.
audit: $(VENV)/.installed
	$(VENV)/bin/pip-audit -r requirements.txt --strict

$(VENV)/.installed: requirements.txt requirements-dev.txt client/requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@

$(CHECKOV_VENV)/.installed: requirements-checkov.txt
	$(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/pip install --quiet --disable-pip-version-check -r requirements-checkov.txt
	touch $@

clean:
	rm -rf $(VENV) $(CHECKOV_VENV) .pytest_cache terraform/.build
