#!/usr/bin/env bash
# Container smoke test: build the Dockerfile with podman against a locally made Debian base, run the image as the
# Kubernetes Deployment does (non-root, read-only root filesystem, no capabilities, the Deployment's CPU and memory
# limits) and check that it
#   1. becomes healthy through its own HEALTHCHECK, answers /ping and real predictions, and stays within the limits,
#      also under a short load test at the limits (bench/loadtest.py: 16 MiB bodies, 20 MP JPEGs, huge decodes);
#   2. runs tini as PID 1 with java as its direct child, as a non-root user, on a read-only root filesystem;
#   3. stops promptly on SIGTERM (podman stop), as a pod must within terminationGracePeriodSeconds;
#   4. serves a model store mounted from a volume instead of the baked-in one;
#   5. ends when java dies, instead of lingering as a healthy-looking shell.
#
#   make container-smoke      (or: bash scripts/container-smoke.sh)
#
# Needs root, the project's .venv (`make install`) and about 25 GB of free disk; podman, buildah, debootstrap, runc,
# slirp4netns and uidmap are apt-installed when missing. No container registry is contacted: the base image comes from
# debootstrap, the Python wheels from a wheelhouse that the host's pip fills (from the index pip is configured with)
# and the build mounts (PIP_ARGS=--no-index). The Debian mirror is DEBIAN_MIRROR / DEBIAN_SECURITY_MIRROR, or else the
# one the host's apt uses: the repository names no package host. Built images and the base are kept, so a second run
# rebuilds only what changed. Settings: the variables below.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WORK=${SMOKE_DIR:-/var/tmp/corruption-smoke}
BASE=${SMOKE_BASE:-localhost/debian:bookworm-minbase}
IMAGE=${SMOKE_IMAGE:-localhost/corruption-detector:smoke}
SUITE=bookworm
MIRROR=${DEBIAN_MIRROR:-}
SECURITY_MIRROR=${DEBIAN_SECURITY_MIRROR:-}
TOOLS=(podman buildah debootstrap runc slirp4netns newuidmap)  # newuidmap: Debian's uidmap package
PACKAGES=(podman buildah debootstrap runc slirp4netns uidmap)
PORT=${SMOKE_PORT:-18080}
VENV=$ROOT/.venv/bin
URL=http://127.0.0.1:$PORT
PODMAN=(podman --runtime runc --cgroup-manager cgroupfs)
CONTAINERS=()
STARTED=$SECONDS

log() { printf '[%4ds] %s\n' $((SECONDS - STARTED)) "$*"; }
fail() {
    log "FAIL: $*"
    exit 1
}
cleanup() {
    local name
    for name in "${CONTAINERS[@]}"; do "${PODMAN[@]}" rm -f "$name" >/dev/null 2>&1 || true; done
}
trap cleanup EXIT

# The Deployment's limits, read from the manifest so that the smoke cannot drift from it: "<cpus> <memory bytes>".
deployment_limits() {
    "$VENV/python" - "$ROOT/k8s/base/deployment.yaml" <<'EOF'
import sys, yaml
UNITS = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30}
limits = yaml.safe_load(open(sys.argv[1]))["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
memory = limits["memory"]
print(limits["cpu"], int(memory[:-2]) * UNITS[memory[-2:]])
EOF
}

# The URI of the host's apt source that serves a suite ("bookworm", "bookworm-security"), from deb822 .sources files or
# one-line .list files; empty if none does.
host_apt_uri() {
    "$VENV/python" - "$1" /etc/apt/sources.list /etc/apt/sources.list.d/* <<'EOF'
import re, sys
from pathlib import Path
suite, files = sys.argv[1], [Path(p) for p in sys.argv[2:] if Path(p).is_file()]
for path in files:
    text = path.read_text(errors="replace")
    if path.suffix == ".sources":
        for stanza in re.split(r"\n\s*\n", text):
            fields = dict(re.findall(r"^([\w-]+):\s*(.*)$", stanza, flags=re.M))
            if suite in fields.get("Suites", "").split() and fields.get("Enabled", "yes") != "no":
                print(fields["URIs"].split()[0])
                sys.exit()
    elif path.suffix == ".list" or path.name == "sources.list":
        for line in text.splitlines():
            words = re.sub(r"\[[^]]*\]", "", line).split()
            if len(words) >= 3 and words[0] == "deb" and words[2] == suite:
                print(words[1])
                sys.exit()
EOF
}

resolve_mirrors() {
    MIRROR_SOURCE="the mirror in DEBIAN_MIRROR"
    [[ -n $MIRROR ]] || MIRROR_SOURCE="the host apt sources' mirror"
    MIRROR=${MIRROR:-$(host_apt_uri "$SUITE")}
    SECURITY_MIRROR=${SECURITY_MIRROR:-$(host_apt_uri "$SUITE-security")}
    [[ -n $MIRROR && -n $SECURITY_MIRROR ]] ||
        fail "no Debian $SUITE mirror in the host's apt sources: set DEBIAN_MIRROR and DEBIAN_SECURITY_MIRROR"
}

ensure_tools() {  # apt-installs the container tools that are missing
    local tool missing=()
    for tool in "${TOOLS[@]}"; do command -v "$tool" >/dev/null || missing+=("$tool"); done
    ((${#missing[@]} == 0)) && return
    log "installing ${PACKAGES[*]} (missing: ${missing[*]})"
    { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${PACKAGES[@]}"; } \
        >"$WORK/apt-get.log" 2>&1 || { tail -20 "$WORK/apt-get.log"; fail "apt-get install ${PACKAGES[*]}"; }
}

make_base() {
    if "${PODMAN[@]}" image exists "$BASE"; then
        log "base image $BASE already made"
        return
    fi
    log "debootstrap --variant=minbase $SUITE from $MIRROR_SOURCE"
    rm -rf "$WORK/rootfs"
    debootstrap --variant=minbase "$SUITE" "$WORK/rootfs" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 ||
        { tail -20 "$WORK/debootstrap.log"; fail "debootstrap"; }
    # The apt sources of the official debian:bookworm-slim (on this mirror), so that security updates and the
    # Dockerfile's pins resolve.
    rm -f "$WORK/rootfs/etc/apt/sources.list"
    cat >"$WORK/rootfs/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $MIRROR
Suites: $SUITE $SUITE-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: $SECURITY_MIRROR
Suites: $SUITE-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
    rm -rf "$WORK/rootfs/var/cache/apt/archives/"*.deb "$WORK/rootfs/var/lib/apt/lists/"*
    tar -C "$WORK/rootfs" -c . | "${PODMAN[@]}" import --quiet - "$BASE" >/dev/null
    rm -rf "$WORK/rootfs"
    log "base image $BASE: $(image_size "$BASE")"
}

fill_wheelhouse() {
    log "pip download -r requirements.txt into $WORK/wheelhouse"
    "$VENV/pip" download --disable-pip-version-check --only-binary=:all: \
        --dest "$WORK/wheelhouse" -r "$ROOT/requirements.txt" >"$WORK/pip-download.log" 2>&1 ||
        { tail -20 "$WORK/pip-download.log"; fail "pip download"; }
    log "wheelhouse: $(du -sh "$WORK/wheelhouse" | cut -f1)"
}

build_image() {
    log "podman build $IMAGE (log: $WORK/build.log)"
    "${PODMAN[@]}" build --isolation chroot --format docker --pull=never \
        --build-arg BASE_IMAGE="$BASE" --build-arg PIP_ARGS="--no-index --find-links /wheelhouse" \
        --volume "$WORK/wheelhouse:/wheelhouse:ro" --tag "$IMAGE" "$ROOT" >"$WORK/build.log" 2>&1 ||
        { tail -40 "$WORK/build.log"; fail "podman build"; }
    grep -E '^\[[0-9]/[0-9]\] STEP [0-9]+/[0-9]+: (FROM|RUN)' "$WORK/build.log" | cut -c1-120 || true
    log "image $IMAGE: $(image_size "$IMAGE")"
}

image_size() { "${PODMAN[@]}" image inspect --format '{{.Size}}' "$1" | numfmt --to=iec-i --suffix=B; }

start_container() {  # name, extra podman run arguments...
    local name=$1 cpus memory
    shift
    read -r cpus memory < <(deployment_limits)
    CONTAINERS+=("$name")
    # run.log collects podman's complaints that, without systemd, it cannot time healthchecks (run below instead).
    "${PODMAN[@]}" run --detach --name "$name" --network slirp4netns --publish "127.0.0.1:$PORT:8080" \
        --ulimit nofile=20000:20000 --ulimit nproc=32768:32768 --cpus "$cpus" --memory "$memory" \
        --read-only --cap-drop ALL --security-opt no-new-privileges "$@" "$IMAGE" >/dev/null 2>"$WORK/run.log" ||
        { cat "$WORK/run.log"; fail "podman run $name"; }
    log "started $name (--cpus $cpus --memory $(numfmt --to=iec-i --suffix=B "$memory"), read-only, no capabilities)"
}

state() { "${PODMAN[@]}" inspect --format "{{.State.$2}}" "$1"; }

show_errors() {  # the container's distinct error lines: why it is not serving
    "${PODMAN[@]}" logs "$1" 2>&1 | grep -E 'Error|Exception|FAIL|failed' | cut -d' ' -f3- | sort -u | tail -15
}

wait_healthy() {  # name: run the image's own HEALTHCHECK until it passes
    local name=$1 deadline=$((SECONDS + 300)) began=$SECONDS
    until "${PODMAN[@]}" healthcheck run "$name" >/dev/null 2>&1; do
        if [[ $(state "$name" Running) != true ]]; then
            show_errors "$name"
            fail "$name exited with $(state "$name" ExitCode) before it became healthy"
        fi
        if ((SECONDS > deadline)); then
            show_errors "$name"
            fail "$name not healthy after 300 s"
        fi
        sleep 2
    done
    log "$name healthy after $((SECONDS - began)) s (HEALTHCHECK: model READY and a real prediction)"
}

# Posts images to the published inference port: prints one answer, then the rate of a short closed-loop load.
predict() {  # path under /predictions, number of requests
    "$VENV/python" - "$URL/predictions/$1" "$2" "$ROOT/../shared/data/cifar10-subset" <<'EOF'
import io, sys, time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
import requests
from PIL import Image

url, count, subset = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
pngs = sorted(subset.rglob("*.png"))[:1]
image = Image.open(pngs[0]).convert("RGB") if pngs else Image.linear_gradient("L").convert("RGB")
buffer = io.BytesIO()
image.resize((640, 480)).save(buffer, format="JPEG", quality=90)
answer = requests.post(url, data=buffer.getvalue(), timeout=30)
body = answer.json()
assert answer.status_code == 200 and set(body["probs"]) == {"clean", "corrupted"}, answer.text
assert abs(sum(body["probs"].values()) - 1) < 1e-3 and body["label"] in body["probs"], body
print(f"    prediction: {body}")
began = time.perf_counter()
with ThreadPoolExecutor(8) as pool:
    codes = list(pool.map(lambda _: requests.post(url, data=buffer.getvalue(), timeout=60).status_code, range(count)))
elapsed = time.perf_counter() - began
assert codes.count(200) == count, f"{count - codes.count(200)} of {count} requests failed: {set(codes)}"
print(f"    {count} more predictions at concurrency 8: {count / elapsed:.0f} req/s, all 200")
EOF
}

status_of() { curl -s -o /dev/null -w '%{http_code}' -X POST "$URL/predictions/$1" --data-binary x; }

# Runs inside the container: who is PID 1, who is java's parent, which user, can it write outside /tmp.
check_process_tree() {
    "${PODMAN[@]}" exec -i "$1" python3 - <<'EOF'
import os
from pathlib import Path

def comm(pid): return Path(f"/proc/{pid}/comm").read_text().strip()
def parent(pid): return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])

java = [int(p) for p in os.listdir("/proc") if p.isdigit() and comm(p) == "java"]
assert comm(1) == "tini", comm(1)
assert len(java) == 1 and parent(java[0]) == 1, f"java {java} is not PID 1's child"
def status(pid): return dict(line.split(":\t", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())

java_status = status(java[0])
assert java_status["Uid"].split()[0] == "10001" and os.getuid() == 10001, java_status["Uid"]
assert java_status["CapEff"] == "0000000000000000" and java_status["NoNewPrivs"] == "1", java_status
try:
    Path("/app/written").write_text("x")
    raise AssertionError("the root filesystem is writable")
except OSError:
    pass
workers = [p for p in os.listdir("/proc") if p.isdigit() and parent(int(p)) == java[0]]
print(f"    PID 1 tini -> java (PID {java[0]}) -> {len(workers)} workers; uid 10001, no capabilities, "
      "no new privileges, / read-only")
EOF
}

memory_peak() {  # the container's memory cgroup high-water mark: what its limit is compared with
    local cgroup
    cgroup=$(state "$1" CgroupPath)
    numfmt --to=iec-i --suffix=B <"/sys/fs/cgroup/memory$cgroup/memory.max_usage_in_bytes"
}

load_test() {  # name: the load test at the limits against the container, which must survive it within its memory limit
    local name=$1 java_before
    java_before=$(java_pid "$name")
    log "load test at the limits (log: $WORK/loadtest.log)"
    (cd "$ROOT" && "$VENV/python" -m bench.loadtest --url "$URL" --seconds "${SMOKE_LOAD_SECONDS:-30}" \
        --burst-seconds "${SMOKE_BURST_SECONDS:-10}") >"$WORK/loadtest.log" 2>&1 ||
        { grep -vi warn "$WORK/loadtest.log" | tail -40; fail "load test"; }
    grep -E '^\| [^-i]|s:$|normal requests|answers /ping|passed' "$WORK/loadtest.log" | sed 's/^/    /'
    [[ $(state "$name" Running) == true && $(java_pid "$name") == "$java_before" ]] ||
        fail "the container or java restarted during the load test"
    log "after the load test: same java (PID $java_before), memory peak $(memory_peak "$name") of the $(numfmt \
        --to=iec-i --suffix=B "$(deployment_limits | cut -d' ' -f2)") limit, OOM kills: $(oom_kills "$name")"
}

java_pid() {  # java's PID inside the container
    "${PODMAN[@]}" exec "$1" python3 -c 'import os; print(*[p for p in os.listdir("/proc")
        if p.isdigit() and open(f"/proc/{p}/comm").read().strip() == "java"])'
}

oom_kills() {  # the container's memory cgroup's OOM-kill count (0: nothing in it was killed for memory)
    local cgroup
    cgroup=$(state "$1" CgroupPath)
    if [[ -f /sys/fs/cgroup/memory$cgroup/memory.oom_control ]]; then
        awk '/oom_kill /{print $2}' "/sys/fs/cgroup/memory$cgroup/memory.oom_control"
    else
        awk '/oom_kill /{print $2}' "/sys/fs/cgroup$cgroup/memory.events"
    fi
}

smoke_baked_model() {
    local name=corruption-smoke-baked began
    start_container "$name"
    wait_healthy "$name"
    log "GET /ping: $(curl -fsS "$URL/ping" | tr -d ' \n')"
    predict corruption 200
    check_process_tree "$name"
    log "memory: $("${PODMAN[@]}" stats --no-stream --format '{{.MemUsage}}' "$name") now, $(memory_peak "$name") peak"
    load_test "$name"
    began=$SECONDS
    "${PODMAN[@]}" stop --time 30 "$name" >/dev/null 2>>"$WORK/run.log"
    log "podman stop (SIGTERM): stopped in $((SECONDS - began)) s, exit code $(state "$name" ExitCode)"
    ((SECONDS - began < 15)) || fail "SIGTERM took $((SECONDS - began)) s to stop the container"
    "${PODMAN[@]}" rm "$name" >/dev/null 2>>"$WORK/run.log"
}

smoke_mounted_store() {
    local name=corruption-smoke-volume store=$WORK/model_store began
    rm -rf "$store" "$WORK/archive"
    "$VENV/python" -m handler.archive --weights "$ROOT/weights/model.pt" --version 2.0 --out "$WORK/archive" >/dev/null
    mkdir -p "$store"
    mv "$WORK/archive/corruption-2.0.mar" "$store/corruption.mar"
    start_container "$name" --volume "$store:/app/model_store:ro"
    wait_healthy "$name"
    predict corruption/2.0 20
    [[ $(status_of corruption/1.0) == 404 ]] || fail "the baked-in 1.0 is served although a store is mounted over it"
    log "mounted store served: /predictions/corruption/2.0 answers, the baked-in 1.0 is gone (404)"
    "${PODMAN[@]}" exec "$name" python3 -c 'import os; [os.kill(int(p), 9) for p in os.listdir("/proc")
        if p.isdigit() and open(f"/proc/{p}/comm").read().strip() == "java"]'
    began=$SECONDS
    while [[ $(state "$name" Running) == true ]]; do
        ((SECONDS - began < 20)) || fail "the container outlived java by 20 s"
        sleep 0.5
    done
    log "java killed: the container ended $((SECONDS - began)) s later with exit code $(state "$name" ExitCode)"
}

main() {
    [[ $EUID == 0 ]] || fail "run as root (podman build --isolation chroot and debootstrap need it)"
    for tool in curl numfmt; do command -v "$tool" >/dev/null || fail "$tool missing"; done
    [[ -x $VENV/python ]] || fail "no .venv: run make install"
    mkdir -p "$WORK"
    log "container smoke test in $WORK"
    ensure_tools
    resolve_mirrors
    make_base
    fill_wheelhouse
    build_image
    smoke_baked_model
    smoke_mounted_store
    log "PASS: image $IMAGE ($(image_size "$IMAGE")) built and served; total $((SECONDS - STARTED)) s"
}

# Run when executed; when sourced (tests/test_container.py), only define the functions.
if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
    main "$@"
fi
