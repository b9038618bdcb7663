# The two commands a newcomer needs: `make run` and `make test`.
# Both create their virtualenvs from the pinned requirements on first use.
PYTHON       ?= python3
VENV         ?= .venv
CHECKOV_VENV ?= .venv-checkov
PY           := $(VENV)/bin/python
PAGE_DIR     := dev/page
NODE_MODULES := $(PAGE_DIR)/node_modules/.installed

.PHONY: run test lint tfcheck audit bench chaos clean chromium redis ffmpeg media-fixtures smoke

run: $(VENV)/.installed $(NODE_MODULES) redis
	$(PY) -m dev.run

test: lint $(CHECKOV_VENV)/.installed $(NODE_MODULES) chromium redis
	CHECKOV_BIN=$(CHECKOV_VENV)/bin/checkov $(PY) -m pytest $(PYTEST_ARGS)

# ruff (lint and format) and mypy (types) with the settings in pyproject.toml; `make test` runs them first.
lint: $(VENV)/.installed
	$(VENV)/bin/ruff check --no-cache .
	$(VENV)/bin/ruff format --check --no-cache .
	$(VENV)/bin/mypy

# Only the offline Terraform checks (fmt, checkov, provider schema, contracts).
tfcheck: $(VENV)/.installed $(CHECKOV_VENV)/.installed
	CHECKOV_BIN=$(CHECKOV_VENV)/bin/checkov $(PY) -m pytest tests/deploy/test_terraform.py $(PYTEST_ARGS)

# The request path beside its floor; writes the tables into BENCHMARKS.md.
bench: $(VENV)/.installed redis ffmpeg
	$(PY) -m bench.run

# Known vulnerabilities in what the function deploys. Needs PyPI's JSON API
# (or OSV: add --vulnerability-service osv), which these machines cannot reach.
audit: $(VENV)/.installed
	$(VENV)/bin/pip-audit -r requirements.txt --strict

# Proves a deployment: the whole upload journey against API_URL with API_KEY (a test-mode key is
# enough; docs/operations.md). The key goes through the environment, never the command line.
# A few hundred uploads on make run's stack while its parts fail (bench/chaos.py); its table is
# BENCHMARKS.md's (o). CHAOS_ARGS="--seed N" repeats a run's faults.
chaos: $(VENV)/.installed redis
	$(PY) -m bench.chaos $(CHAOS_ARGS)

# The key comes from the environment (FRAMELANE_API_KEY) or a file (API_KEY_FILE), never make's command
# line: make's and the shell's argv are readable by every user through ps.
smoke: $(VENV)/.installed
	@test "$(origin API_KEY)" != "command line" || { echo "error: do not pass API_KEY (ps shows a command line to everyone): export FRAMELANE_API_KEY, or pass API_KEY_FILE=path"; exit 2; }
	@test -n "$(API_URL)" || { echo "usage: FRAMELANE_API_KEY=fl_test_... make smoke API_URL=https://api.example.com [API_KEY_FILE=path] [WEBHOOK_URL=https://receiver.example.com/hook] [SMOKE_ARGS=--emulators]"; exit 2; }
	@$(PY) -m dev.smoke --api-url "$(API_URL)" $(if $(API_KEY_FILE),--api-key-file "$(API_KEY_FILE)") $(if $(WEBHOOK_URL),--webhook-url "$(WEBHOOK_URL)") $(SMOKE_ARGS)

# Remakes the media fixtures in tests/media/ (committed: the tests only read them) with Debian's
# ffmpeg and ffprobe, and fontTools for the fonts; run it only to change one.
media-fixtures: $(VENV)/.installed
	@command -v ffmpeg >/dev/null || { echo "error: no ffmpeg on PATH: install Debian's ffmpeg (apt-get install ffmpeg)"; exit 1; }
	$(PY) tests/media/make.py

$(VENV)/.installed: requirements.txt requirements-dev.txt client/requirements.txt
	@echo "First run (or the requirements changed): creating $(VENV) and installing the pinned packages; about a minute ..."
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@

$(CHECKOV_VENV)/.installed: requirements-checkov.txt
	@echo "Installing checkov into its own $(CHECKOV_VENV) (its hcl2 clashes with ours); once ..."
	$(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/pip install --quiet --disable-pip-version-check -r requirements-checkov.txt
	touch $@

# The browser demo's one library (@mux/upchunk), exactly as its lock file pins it.
$(NODE_MODULES): $(PAGE_DIR)/package.json $(PAGE_DIR)/package-lock.json
	@echo "Installing the browser demo's @mux/upchunk (npm ci in $(PAGE_DIR)) ..."
	cd $(PAGE_DIR) && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error
	touch $@

# Debian's Chromium, for the browser test (tests/client/test_browser.py), where we may install it.
chromium:
	@command -v chromium >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "Installing Debian's chromium for the browser test (apt-get) ..."; \
	    apt-get install -y -qq --no-install-recommends chromium >/dev/null 2>&1 \
	      || { apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium >/dev/null; }; \
	  else \
	    echo "note: no chromium on PATH and not root: tests/client/test_browser.py will skip (install Debian's chromium)"; \
	  fi; }

# Debian's redis-server: the store the limits count in (lib/limits/counters.py), as Memorystore for
# Redis is deployed. `make run`, `make test` and `make bench` start it; installed here where we may.
redis:
	@command -v redis-server >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "Installing Debian's redis-server, where the limits count (apt-get) ..."; \
	    apt-get install -y -qq --no-install-recommends redis-server >/dev/null 2>&1 \
	      || { apt-get update -qq && apt-get install -y -qq --no-install-recommends redis-server >/dev/null; }; \
	  else \
	    echo "error: no redis-server on PATH and not root: install Debian's redis-server (apt-get install redis-server)"; \
	    exit 1; \
	  fi; }

# Debian's ffmpeg and ffprobe: the reference tools the corpus (bench/corpus.py) is judged against, and
# what makes its variants and the media fixtures. `make bench` installs it where we may.
ffmpeg:
	@command -v ffprobe >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "Installing Debian's ffmpeg, the corpus's reference tools (apt-get) ..."; \
	    apt-get install -y -qq --no-install-recommends ffmpeg >/dev/null 2>&1 \
	      || { apt-get update -qq && apt-get install -y -qq --no-install-recommends ffmpeg >/dev/null; }; \
	  else \
	    echo "error: no ffprobe on PATH and not root: install Debian's ffmpeg (apt-get install ffmpeg)"; \
	    exit 1; \
	  fi; }

clean:
	rm -rf $(VENV) $(CHECKOV_VENV) .pytest_cache terraform/.build $(PAGE_DIR)/node_modules .corpus
