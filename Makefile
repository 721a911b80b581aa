# The two entry points a user needs: `make test` and `make demo`. Both set up .venv first
# (scripts/setup_env.sh: idempotent, a no-op in seconds when nothing changed).
VENV ?= .venv
PY := $(VENV)/bin/python

# DDS stays on loopback and in a domain of its own (see ROS_RUNTIME.md).
export ROS_AUTOMATIC_DISCOVERY_RANGE ?= LOCALHOST
export ROS_LOCALHOST_ONLY ?= 1

.PHONY: setup test lint clean-venv

setup:
	@VENV=$(VENV) bash scripts/setup_env.sh

lint: setup
	$(VENV)/bin/ruff check .

test: lint
	$(PY) -m pytest test

clean-venv:
	rm -rf $(VENV)
