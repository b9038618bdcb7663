# The two commands a newcomer needs: `make run` and `make test`.
# Both create .venv from the pinned requirements on first use.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python

.PHONY: run test clean

run: $(VENV)/.installed
	$(PY) -m dev.run

test: $(VENV)/.installed
	$(PY) -m pytest $(PYTEST_ARGS)

$(VENV)/.installed: requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@

clean:
	rm -rf $(VENV) .pytest_cache
