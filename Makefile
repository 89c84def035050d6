# The two commands of the README:  make quickstart  |  make test
VENV ?= .venv
PY := $(VENV)/bin/python
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER = 0
export RAY_USAGE_STATS_ENABLED = 0

RADGRAPH_VENV ?= .venv-radgraph

.PHONY: install radgraph-env browser quickstart test benchmark gpu-check ui

install: $(VENV)/.installed

# torch first and pinned, by pip, so it takes the CPU wheel on this disk and never resolves a CUDA
# build; the rest by uv, which fetches and installs in parallel: the same versions as pip resolves.
# --compile-bytecode as pip does: without .pyc files every Ray worker compiles ray, transformers and
# MLflow again where PYTHONDONTWRITEBYTECODE is set (the test suite took 30 minutes instead of 20).
UV_VERSION := 0.13.9
UV_INSTALL = uv pip install -q --compile-bytecode
$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q torch==2.13.0 uv==$(UV_VERSION)
	$(VENV)/bin/$(UV_INSTALL) --python $(PY) -e ".[test]"
	touch $@

# F1-RadGraph's scorer (the radgraph package) needs transformers 4: it runs in an interpreter of its
# own, named in eval.radgraph_python. The tests use this one.
radgraph-env: $(RADGRAPH_VENV)/.installed

$(RADGRAPH_VENV)/.installed:
	python3 -m venv $(RADGRAPH_VENV)
	$(RADGRAPH_VENV)/bin/python -m pip install -q torch==2.13.0 uv==$(UV_VERSION)
	$(RADGRAPH_VENV)/bin/$(UV_INSTALL) --python $(RADGRAPH_VENV)/bin/python radgraph==0.1.18 transformers==4.57.6
	touch $@

quickstart: install
	$(VENV)/bin/radlab run experiments/quickstart.yaml
	$(VENV)/bin/radlab serve --model models:/radlab-quickstart@candidate --once data/synthetic/images/test/000000.png

# The MLflow UI test drives a real headless Chromium (Debian's package).
browser:
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

# The multi-node cluster tests run in a pytest process of their own: ray.cluster_utils resets
# process-wide Ray state that the session's embedded Ray relies on.
test: install browser radgraph-env
	RADLAB_TEST_RADGRAPH_PYTHON=$(abspath $(RADGRAPH_VENV))/bin/python $(PY) -m pytest -q --durations=25 tests --ignore=tests/test_jobs.py
	$(PY) -m pytest -q --durations=10 tests/test_jobs.py

# Every benchmark records its figures; the table of them all lands in benchmarks/results.md.
BENCHMARK_RESULTS := benchmarks/results.jsonl
benchmark: install
	rm -f $(BENCHMARK_RESULTS)
	for script in train_overhead judge_throughput serve_throughput contrastive scaling data_pipeline \
	    sweep_overhead learning_curve gpu_generate; do \
	  RADLAB_BENCHMARK_RESULTS=$(BENCHMARK_RESULTS) $(PY) benchmarks/$$script.py || exit 1; done
	$(PY) benchmarks/table.py $(BENCHMARK_RESULTS) | tee benchmarks/results.md

# On a machine with a GPU: the 7B path's stage 2 under DeepSpeed ZeRO-2 in fp16 and bf16, its peak
# memory against the plan, a resume against a straight run, then generation speed (about 4 minutes
# on one H100; figures in the README). Without a GPU it says so and exits 0.
gpu-check: install
	$(PY) benchmarks/gpu_check.py
	$(PY) benchmarks/gpu_generate.py

ui: install
	$(VENV)/bin/radlab ui
