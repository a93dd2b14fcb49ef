# Thin targets: each is one script or command. `make demo` and `make test` set everything up themselves.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: venv testdata demo test test-fast docs lint bench services-start services-stop

venv:
	scripts/setup_venv.sh

demo: venv
	scripts/demo.sh $(if $(REPO),--repo $(REPO))

testdata: venv
	scripts/fetch_test_data.sh
	scripts/fetch_platform_wheels.sh --if-docker

# The full suite as CI runs it: as root it also installs and starts what the tests need (scripts/test.sh).
test:
	scripts/test.sh

# Everyday work: unit and DAG-integrity tests on two workers; no engine, no whole-DAG runs, no downloads.
test-fast: venv
	$(PY) -m pytest tests/unit tests/dags -m "not docker and not slow and not e2e" -n 2 -q

docs: venv
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs serve

lint: venv
	$(VENV)/bin/ruff check sera_ops dags plugins tests bench scripts

bench: venv
	$(PY) bench/run_all.py

services-start:
	scripts/services.sh start

services-stop:
	scripts/services.sh stop
