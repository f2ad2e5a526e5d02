# Corruption detector: TorchServe 0.12 with the default model (model_store/corruption.mar) baked in.
#
#   CPU image:   docker build --build-arg TORCH_INDEX="$CPU_WHEELS" -t corruption-detector:1.0 .
#                (CPU_WHEELS: the URL of PyTorch's CPU wheel index, or of your mirror of it)
#   CUDA image:  docker build -t corruption-detector:1.0-cuda .
#                (torch from the same index as everything else; the main index's x86_64 torch is the CUDA 13 build,
#                which brings its own CUDA libraries: the node only needs the NVIDIA driver and container toolkit)
#   A mirror of the package index: --build-arg PIP_ARGS="--index-url <mirror URL>" (the repository names no index host).
#   Offline, from a wheelhouse made with `pip download -r requirements.txt -d wheelhouse` (scripts/container-smoke.sh):
#     podman build -v "$PWD/wheelhouse:/wheelhouse:ro" --build-arg PIP_ARGS="--no-index --find-links /wheelhouse" .
#   Behind a TLS-intercepting proxy: mount its CA bundle the same way and pass PIP_ARGS="--cert /ca.pem".
#
# Versions: Python packages are pinned in requirements.txt; Debian packages below (bump them when Debian publishes a
# security update: `apt-cache policy PACKAGE` in the base image shows the current one). For reproducible builds pin
# the base by digest too: --build-arg BASE_IMAGE=debian:bookworm-slim@sha256:...
# See k8s/README.md for sizes, the per-pod footprint and the Kubernetes deployment.

ARG BASE_IMAGE=debian:bookworm-slim

FROM ${BASE_IMAGE} AS builder
ARG PYTHON_VERSION=3.11.2-6+deb12u9
# Where torch and torchvision come from: an index URL (the CPU wheels' index for the CPU image), or empty for the same
# index as every other package (pip's defaults and PIP_ARGS), whose x86_64 torch is the ~5 GB CUDA build.
ARG TORCH_INDEX=""
# Extra pip arguments, e.g. "--no-index --find-links /wheelhouse" or "--cert /ca.pem".
ARG PIP_ARGS=""
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.11="${PYTHON_VERSION}" python3.11-venv="${PYTHON_VERSION}" \
    && apt-get clean \
    && rm -rf /var/lib/apt/lists/*
COPY requirements.txt /build/
# torch and torchvision alone from TORCH_INDEX (at requirements.txt's pins), then everything else, their
# dependencies included, from the package index at requirements.txt's pins; pip check proves the result consistent.
RUN read -ra pip_args <<< "${PIP_ARGS}" \
    && torch_index=() \
    && if [ -n "${TORCH_INDEX}" ]; then torch_index=(--index-url "${TORCH_INDEX}"); fi \
    && python3.11 -m venv /opt/venv \
    && grep -E '^(torch|torchvision)==' /build/requirements.txt > /build/torch-requirements.txt \
    && /opt/venv/bin/pip install --no-cache-dir "${pip_args[@]}" "${torch_index[@]}" --no-deps \
        -r /build/torch-requirements.txt \
    && /opt/venv/bin/pip install --no-cache-dir "${pip_args[@]}" -r /build/requirements.txt \
    && /opt/venv/bin/pip check
# The archive is built here from the shipped weights, with the same code as `make archive`: it packs the
# serving core (detector/) whole, with the handler.
COPY detector/ /build/detector/
COPY handler/ /build/handler/
COPY weights/model.pt /build/weights/model.pt
WORKDIR /build
RUN /opt/venv/bin/python -m handler.archive --weights weights/model.pt --version 1.0 --out /build/model_store

FROM ${BASE_IMAGE} AS runtime
ARG PYTHON_VERSION=3.11.2-6+deb12u9
ARG JRE_VERSION=17.0.21.1+2-1~deb12u1
ARG TINI_VERSION=0.19.0-1+b3
ARG TURBOJPEG_VERSION=1:2.1.5-2
# The JRE's postinst links man pages into /usr/share/man/man1, which slim images leave out.
RUN mkdir -p /usr/share/man/man1 \
    && apt-get update \
    && apt-get install -y --no-install-recommends python3.11="${PYTHON_VERSION}" \
        openjdk-17-jre-headless="${JRE_VERSION}" tini="${TINI_VERSION}" libturbojpeg0="${TURBOJPEG_VERSION}" \
    && apt-get clean \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --no-create-home --home-dir /app --shell /usr/sbin/nologin app
COPY --from=builder /opt/venv /opt/venv
WORKDIR /app
COPY config.properties /app/
# config.properties names it (metrics_config), relative to the working directory.
COPY observability/metrics.yaml /app/observability/
COPY container/ /app/container/
COPY --from=builder /build/model_store/ /app/model_store/
# Threads: the workers set their own (handler/model-config.yaml); OMP_NUM_THREADS=1 keeps OpenMP from adding more.
# Nothing is written outside /tmp: Kubernetes mounts an emptyDir there and the root filesystem stays read-only.
ENV PATH=/opt/venv/bin:${PATH} \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    OMP_NUM_THREADS=1 \
    TMPDIR=/tmp \
    HOME=/tmp
USER 10001:10001
# Inference and Prometheus metrics; management (8081) listens on loopback only and is never published.
EXPOSE 8080 8082
HEALTHCHECK --interval=15s --timeout=10s --start-period=120s --retries=3 \
    CMD ["/opt/venv/bin/python", "/app/container/probe.py", "--predict"]
# tini is PID 1: it forwards SIGTERM to java and reaps orphaned workers; entrypoint.py execs java.
ENTRYPOINT ["/usr/bin/tini", "--", "/opt/venv/bin/python", "/app/container/entrypoint.py"]
