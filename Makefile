# elastic-keras: every user-facing job is a target here.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python

# BACKEND: tensorflow (default), jax or torch; `make install BACKEND=jax` remembers it.
# Where an NVIDIA GPU is present (nvidia-smi lists one), the backend's GPU build is
# installed: tensorflow[and-cuda], jax[cuda12], or PyPI's CUDA build of torch.
BACKEND ?= $(shell cat $(VENV)/backend 2>/dev/null || echo tensorflow)
GPU     := $(shell nvidia-smi -L 2>/dev/null | grep -q '^GPU' && echo gpu || echo cpu)
EXTRA_tensorflow_gpu := tensorflow-cuda
EXTRA_jax_cpu := jax
EXTRA_jax_gpu := jax-cuda
EXTRA_torch_cpu := torch
EXTRA_torch_gpu := torch
EXTRAS  := $(EXTRA_$(BACKEND)_$(GPU))
STAMP   := $(VENV)/.installed-$(BACKEND)-$(GPU)
DEV     := $(VENV)/.installed-dev
RAY     := $(VENV)/.installed-ray
EXPORT  := $(VENV)/.installed-export
SERVE   := $(VENV)/.installed-serve
export KERAS_BACKEND := $(BACKEND)

# PROFILE: paper (default), smoke or demo. PROTOCOL: paper (default) or authors (what the
# authors' scripts ran). DATA: replace the datasets (synthetic, digits). DATA_DIR: local
# copy of the official CIFAR files. WEIGHTS: imagenet (default for paper), none, or a
# folder of Keras' *_notop.h5 files. RUNS: a subset, e.g. RUNS=mobilenet,vgg16.
# LAUNCHER: local (default) or ray; GPUS_PER_RUN=0.25 packs four runs on a GPU (ray).
PROFILE ?=
PROTOCOL ?=
LAUNCHER ?=
GPUS_PER_RUN ?=
CHECK ?=
DATA    ?=
DATA_DIR ?=
WEIGHTS ?=
RUNS    ?=
ALLOW_CPU ?=
# SEEDS=N: trains N runs of each cell (seeds 0..N-1; seed 0 is the run as it is). Every
# table gives each number's mean and 95% interval over every finished seed. BACKBONE: the
# backbone of reproduce-methods (mobilenet); SCHEMES: which loss schemes it trains (all).
# A selection (RUNS, BACKBONE, SCHEMES, SEEDS) limits what trains, never what a table shows.
SEEDS   ?=
BACKBONE ?=
SCHEMES ?=

export TF_CPP_MIN_LOG_LEVEL ?= 3

.PHONY: install install-ray install-export install-serve test test-all demo reproduce-table1 reproduce-table2 tables \
        reproduce-methods \
        figure3 budget reproduce-bai-table2 bench clean

REPRO_ARGS = --profile $(or $(PROFILE),paper) $(if $(PROTOCOL),--protocol $(PROTOCOL)) \
             $(if $(DATA),--data $(DATA)) $(if $(DATA_DIR),--data-dir $(DATA_DIR)) \
             $(if $(WEIGHTS),--weights $(WEIGHTS)) $(if $(RUNS),--runs $(RUNS)) \
             $(if $(ALLOW_CPU),--allow-cpu) $(if $(LAUNCHER),--launcher $(LAUNCHER)) \
             $(if $(GPUS_PER_RUN),--gpus-per-run $(GPUS_PER_RUN)) \
             $(if $(SEEDS),--seeds $(SEEDS))
SETTING_ARGS = $(if $(PROFILE),--profile $(PROFILE)) $(if $(PROTOCOL),--protocol $(PROTOCOL)) \
               $(if $(DATA),--data $(DATA))

# The offline demo: a reduced Table I on scikit-learn's digits (elastic against plain),
# tables, loss curves and an accuracy-vs-MACs curve under results/demo/, and a calibrated,
# certified early-exit threshold for Elastic-MobileNet (needs the calibration extra).
EK := $(PY) -m elastic_keras
DEMO_RUN := runs/demo/digits/digits-mobilenet-elastic
CAL     := $(VENV)/.installed-calibration
demo: $(STAMP) $(CAL)
	$(EK) reproduce table1 --profile demo --data digits --runs mobilenet,densenet121 \
	    --out results/demo $(if $(SEEDS),--seeds $(SEEDS))
	$(EK) plot $(DEMO_RUN) --out results/demo/loss_curves.png
	$(EK) calibrate $(DEMO_RUN) --epsilon 0.02 --delta 0.1
	$(EK) budget $(DEMO_RUN) --out results/demo
	@echo "demo results: results/demo/ (demo profile on digits: NOT a reproduction);"
	@echo "certified threshold, temperatures: $(DEMO_RUN)/calibration.json (what it certifies: above)"

# The paper's tables: trains every unfinished run (resuming partial ones), then writes
# results/table1.{csv,md} / table2.{csv,md}. Interrupt and rerun at will.
reproduce-table1: $(STAMP) $(if $(filter ray,$(LAUNCHER)),$(RAY))
	$(EK) reproduce table1 $(REPRO_ARGS)

reproduce-table2: $(STAMP) $(if $(filter ray,$(LAUNCHER)),$(RAY))
	$(EK) reproduce table2 $(REPRO_ARGS)

# The papers' loss weightings compared (uniform, Bai et al., AuxNet's gamma and multi-way
# backprop, heads only) on one backbone per dataset: results/[PREFIX]methods.{csv,md,png}.
# Offline: make reproduce-methods PROFILE=demo DATA=digits SEEDS=3.
reproduce-methods: $(STAMP) $(if $(filter ray,$(LAUNCHER)),$(RAY))
	$(EK) reproduce methods $(REPRO_ARGS) $(if $(BACKBONE),--backbone $(BACKBONE)) \
	    $(if $(SCHEMES),--schemes $(SCHEMES))

# The tables again from the finished runs; CHECK=1.0 fails when ours differ from the paper's.
tables: $(STAMP)
	$(EK) tables $(SETTING_ARGS) $(if $(CHECK),--check $(CHECK))

# Figure 3 from the CIFAR-10 DenseNet-121 runs' histories (profile/data of the last
# reproduce unless PROFILE/DATA are given).
figure3: $(STAMP)
	$(EK) figure3 $(SETTING_ARGS)

# Benchmarks print ratios measured in one run (targets in their last lines); the GPU one
# (scripts/bench_gpu.py) wants a GPU.
bench: $(STAMP) $(CAL) $(EXPORT)
	$(PY) scripts/bench_exit_overhead.py
	$(PY) scripts/bench_memory.py
	$(PY) scripts/bench_exit_latency.py
	$(PY) scripts/bench_resume.py
	$(PY) scripts/bench_guarantee.py
	$(PY) scripts/bench_export.py
	$(PY) scripts/bench_quant.py
	$(PY) scripts/bench_faults.py
	$(PY) scripts/bench_drift.py

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	@case "$(BACKEND)" in tensorflow|jax|torch) ;; *) echo "BACKEND must be tensorflow, jax or torch, not '$(BACKEND)'"; exit 2;; esac
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".$(if $(EXTRAS),[$(EXTRAS)])"
	echo $(BACKEND) > $(VENV)/backend
	@echo "installed elastic-keras for Keras backend $(BACKEND) ($(GPU) build)"
	touch $(STAMP)

$(DEV): $(STAMP)
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(DEV)

# The suite under TensorFlow, then its backend subset under JAX (CPU build); two workers.
PYTEST := $(PY) -m pytest -q -n 2 --durations=10
test: $(DEV)
	$(PY) -m mypy elastic_keras
	KERAS_BACKEND=tensorflow $(PYTEST)
	KERAS_BACKEND=jax $(PYTEST) -m backends

test-all: $(DEV)
	KERAS_BACKEND=tensorflow $(PYTEST) -m ""
	KERAS_BACKEND=jax $(PYTEST) -m backends

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache

# Elastic inference: accuracy vs MACs of exit cascades for every finished run under
# runs/$(PROFILE); thresholds chosen on validation.
budget: $(STAMP)
	$(EK) budget runs/$(or $(PROFILE),paper)$(if $(filter authors,$(PROTOCOL)),-authors)

# Bai et al. Table II (MACs at the first weighted and the last exit), beside the paper's.
reproduce-bai-table2: $(STAMP)
	$(EK) bai-table2

$(CAL): $(STAMP)
	$(PY) -m pip install --quiet -e ".[calibration]"
	touch $(CAL)

# Ray, for LAUNCHER=ray (an optional extra: the default install and the demo need none).
install-ray: $(RAY)
$(RAY): $(STAMP)
	$(PY) -m pip install --quiet -e ".[ray]"
	touch $(RAY)

# The HTTP server (python -m elastic_keras serve): Starlette on uvicorn, prometheus_client and
# the export runtimes; Ray Serve for serve --ray comes with install-ray.
install-serve: $(SERVE)
$(SERVE): $(STAMP)
	$(PY) -m pip install --quiet -e ".[serve]"
	touch $(SERVE)

# LiteRT, tf2onnx/onnx and onnxruntime, for `export --format litert|onnx`, `latency`, `predict`
# (an optional extra; SavedModel export needs only TensorFlow).
install-export: $(EXPORT)
$(EXPORT): $(STAMP)
	$(PY) -m pip install --quiet -e ".[export]"
	touch $(EXPORT)
