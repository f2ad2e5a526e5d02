#!/bin/sh
# Lay out what an InferenceService's storageUri must hold for KServe's TorchServe runtime, which starts
#   torchserve --start --model-store=/mnt/models/model-store --ts-config=/mnt/models/config/config.properties
# with TS_SERVICE_ENVELOPE set:
#   <out>/config/config.properties   the project's config.properties with the storage's paths, and without
#                                    enable_envvars_config: TS_SERVICE_ENVELOPE must not switch on TorchServe's
#                                    envelopes (they keep one request per batch; the handler speaks KServe itself)
#   <out>/config/metrics.yaml        observability/metrics.yaml (TorchServe exports only declared metrics)
#   <out>/model-store/corruption.mar the archive (`make archive`)
# Usage, from the repository root: sh k8s/kserve/storage.sh <out> [archive]; then copy <out> to the volume or
# bucket the storageUri names (k8s/kserve/inferenceservice.yaml).
set -eu
out=${1:?usage: sh k8s/kserve/storage.sh <out> [archive]}
archive=${2:-model_store/corruption.mar}
test -f "$archive" || { echo "no archive at $archive: run make archive first" >&2; exit 1; }
mkdir -p "$out/config" "$out/model-store"
sed -e '/^enable_envvars_config=/d' \
    -e 's|^metrics_config=.*|metrics_config=/mnt/models/config/metrics.yaml|' \
    -e 's|^model_store=.*|model_store=/mnt/models/model-store|' \
    config.properties > "$out/config/config.properties"
cp observability/metrics.yaml "$out/config/metrics.yaml"
cp "$archive" "$out/model-store/corruption.mar"
echo "KServe storage laid out in $out"
