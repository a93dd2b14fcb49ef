# Thin targets: each is one script or command. `make demo` and `make test` set everything up themselves.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: venv testdata demo test lint bench services-start services-stop

venv:
	scripts/setup_venv.sh

demo: venv
	scripts/demo.sh $(if $(REPO),--repo $(REPO))

testdata: venv
	scripts/fetch_test_data.sh
	scripts/fetch_platform_wheels.sh --if-docker

test: venv testdata
	$(PY) -m pytest

lint: venv
	$(VENV)/bin/ruff check sera_ops dags plugins tests bench scripts

bench: venv
	$(PY) bench/run_all.py

services-start:
	scripts/services.sh start

services-stop:
	scripts/services.sh stop
