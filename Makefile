# The two commands of README.md: `make demo` (the embedded default run) and `make test`.
# Each creates the virtual environment first when it is missing or setup.py changed.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
RUN_DIR ?= runs/demo
BASELINE_DIR ?= runs/demo-baseline
# Compiled XLA programs are kept between runs (a restarted demo, repeated test runs compile nothing again).
export JAX_COMPILATION_CACHE_DIR ?= $(HOME)/.cache/spactor/jax

.PHONY: demo demo-ssr demo-ssr-study demo-downstream test env clean

$(VENV)/.installed: setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

env: $(VENV)/.installed

# The SC baseline (τ = 0) with the same steps first, then SpacTor, then the comparison report of the two.
demo: $(VENV)/.installed
	$(PY) -m spactor.train --gin_file=gin/runs/demo.gin --gin.MODEL_DIR="'$(BASELINE_DIR)'" --gin.TAU=0
	$(PY) -m spactor.train --gin_file=gin/runs/demo.gin --gin.MODEL_DIR="'$(RUN_DIR)'"
	$(PY) -m spactor.report $(BASELINE_DIR) $(RUN_DIR) --out $(RUN_DIR)/comparison

# Fine-tunes the `make demo` checkpoint (running the demo first while it has not finished) and a from-scratch model
# on the embedded downstream task; prints both runs' metrics and writes runs/demo-downstream/results.json.
demo-downstream: $(VENV)/.installed
	grep -qs '"preempted": false' $(RUN_DIR)/summary.json || $(MAKE) demo
	$(PY) -m spactor.finetune_demo --gin_file=gin/finetune/demo.gin --gin.INIT_CHECKPOINT="'$(RUN_DIR)'" \
	    --gin.MODEL_DIR="'runs/demo-downstream'"

demo-ssr: $(VENV)/.installed
	$(PY) -m ssr.demo --workdir=runs/demo-ssr

demo-ssr-study: $(VENV)/.installed
	$(PY) -m ssr.demo --workdir=runs/demo-ssr --generator_study

# The replication study (about 90 minutes on 2 cores; resumes where it stopped; writes docs/study.md): spactor/study.py.
study: $(VENV)/.installed
	$(PY) -m spactor.study --workdir=runs/study --doc=docs/study.md

test: $(VENV)/.installed
	$(PY) -m pytest -q -n 2 tests

clean:
	rm -rf runs
