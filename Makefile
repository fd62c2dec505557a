# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# GPU users: make setup PADDLE=paddlepaddle-gpu==3.3.1 PADDLE_INDEX=<paddle's CUDA wheel index>
PADDLE ?=
PADDLE_INDEX ?=

.PHONY: setup test demo clean bench

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	@if [ -n "$(PADDLE)" ]; then $(PY) -m pip install --quiet "$(PADDLE)" $(if $(PADDLE_INDEX),-i $(PADDLE_INDEX)); fi
	$(PY) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

# two pytest workers (pytest-xdist; one test file per worker, so module fixtures are built once)
TEST_WORKERS ?= 2
test: $(STAMP)
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile tests

demo: $(STAMP)
	$(PY) -m alignment.tools.demo

bench: $(STAMP)
	$(PY) bench/dpo_step.py --threads 2
	$(PY) bench/dpo_step.py --threads 2 --fusemt off
	$(PY) bench/logps.py --threads 2
	$(PY) bench/logps.py --threads 2 --lm-head 512
	$(PY) bench/rollout.py --threads 2
	$(PY) bench/ppo_step.py --threads 2
	$(PY) bench/blas.py --threads 2
	$(PY) bench/rms_norm.py
	$(PY) bench/attention_core.py
	$(PY) bench/parallel.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache log demo_output
