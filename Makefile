# The user's verbs. Every target that needs Python builds .venv on demand.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

NODES ?=
ARGS  ?=
ADDRESS ?=
IMAGE   ?=
SECRET  ?= alexnet-credentials
LR      ?= 0.02,0.01
DROPOUT ?= 0.5,0.3
DEMO_SHARDS := data/shards/demo

.PHONY: install test test-fast lint imports train submit kuberay sweep shards bench bench-gpu gpu-check clean

install: $(STAMP)

# torch first, by itself: its wheel decides CPU vs CUDA build, and a range here lets users keep newer torch.
$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch, torchvision" 2>/dev/null || $(PY) -m pip install -q "torch>=2.4" "torchvision>=0.19"
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q --durations=15  # the slowest tests: CI has a budget of ~20 minutes

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

lint: imports
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# The layering and no import circles (contracts in pyproject.toml: [tool.importlinter]).
imports: $(STAMP)
	$(VENV)/bin/lint-imports

$(DEMO_SHARDS)/manifest.json: | $(STAMP)
	$(PY) -m shards demo --out $(DEMO_SHARDS)

shards: $(STAMP) $(DEMO_SHARDS)/manifest.json

train: $(STAMP) $(DEMO_SHARDS)/manifest.json
	$(PY) -m orchestrator.train $(if $(NODES),cluster.nodes=$(NODES)) $(ARGS)

# A run on a remote Ray cluster through Ray Jobs: ADDRESS=http://<head>:8265 (or RAY_ADDRESS).
submit: $(STAMP)
	$(PY) -m orchestrator.submit $(if $(ADDRESS),--address $(ADDRESS)) $(if $(NODES),--nodes $(NODES)) $(ARGS)

# A KubeRay RayJob manifest for the same run -> rayjob.yaml (then: kubectl apply -f rayjob.yaml).
kuberay: $(STAMP)
	$(PY) -m orchestrator.submit --kuberay --out rayjob.yaml $(if $(IMAGE),--image $(IMAGE)) --secret $(SECRET) $(if $(NODES),--nodes $(NODES)) $(ARGS)

sweep: $(STAMP) $(DEMO_SHARDS)/manifest.json
	$(PY) -m orchestrator.train -m optim.lr=$(LR) model.dropout=$(DROPOUT) $(if $(NODES),cluster.nodes=$(NODES)) $(ARGS)

bench: $(STAMP) $(DEMO_SHARDS)/manifest.json
	$(PY) -m orchestrator.tools.bench

bench-gpu: $(STAMP)
	$(PY) -m orchestrator.tools.bench --gpu

# The CUDA/NCCL path, tested and measured on a GPU machine -> gpu-check.json. DRY=1: the same
# script on the CPU at toy sizes, skipping what needs CUDA (CI runs it through make test).
gpu-check: $(STAMP)
	$(PY) -m orchestrator.tools.gpu_check $(if $(DRY),--dry-run)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache outputs multirun bench.json bench-gpu.json gpu-check.json rayjob.yaml
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
