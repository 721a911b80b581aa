# The two entry points a user needs: `make test` and `make demo`. Both set up .venv first
# (scripts/setup_env.sh: idempotent, a no-op in seconds when nothing changed).
VENV ?= .venv
PY := $(VENV)/bin/python

# DDS stays on loopback and in a domain of its own (see ROS_RUNTIME.md).
export ROS_AUTOMATIC_DISCOVERY_RANGE ?= LOCALHOST
export ROS_LOCALHOST_ONLY ?= 1

.PHONY: setup test lint demo demo-eval clean-venv

setup:
	@VENV=$(VENV) bash scripts/setup_env.sh

lint: setup
	$(VENV)/bin/ruff check .

test: lint
	$(PY) -m pytest test

# The main job: the synthetic camera and the pose node as two processes over loopback DDS for
# DEMO_SECONDS, a live line per second (rates, latency, drops, objects, error against ground
# truth), then a summary; overlays and summary.json land in demo_out/.
DEMO_SECONDS ?= 30
demo: setup
	$(VENV)/bin/clipose-demo --duration $(DEMO_SECONDS) --out demo_out

# The evaluation demo: render NOCS-format scenes with exact ground truth, score the NOCS-map
# (Umeyama + RANSAC) reference on them, write tables and AP plots.
DEMO_OUT ?= out/demo
demo-eval: setup
	$(VENV)/bin/clipose-synth --out $(DEMO_OUT)/data --split test --scenes 12 \
		--frames-per-scene 2 --seed 0 --clean
	$(VENV)/bin/clipose-eval --data $(DEMO_OUT)/data/test --out $(DEMO_OUT)/eval
	@echo "demo: frames in $(DEMO_OUT)/data/test, metrics and AP curves in $(DEMO_OUT)/eval"

clean-venv:
	rm -rf $(VENV)
