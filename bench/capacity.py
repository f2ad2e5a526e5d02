"""Capacity on paper: the replica count the HPA settles on for a request rate, and the headroom it leaves.

python -m bench.capacity --target-rps 300 --pod-rate 138 [--pod-cores 2.8]
make bench | python -m bench.capacity --target-rps 300 --bench -   # the pod rate from the benchmark table

The model is the HPA's own rule. A pod serving r req/s uses r / pod_rate *
pod_cores CPU cores (CPU-bound inference: CPU use grows with the rate up to the
measured saturation point), so N pods sharing the load L run at utilisation
u(N) = L * pod_cores / (N * pod_rate * cpu_request). The HPA wants
ceil(N * u(N) / target) pods, which is the same for every N: it settles on
N* = ceil(L * pod_cores / (pod_rate * cpu_request * target)), clamped to
[minReplicas, maxReplicas]. It ignores ratios within its tolerance (10%), so an
HPA already at N* - 1 may stay there; that is reported too. minReplicas,
maxReplicas, the target and the CPU request are read from k8s/base.
"""

import argparse
import math
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from detector.paths import ROOT

BASE = ROOT / "k8s" / "base"
# kube-controller-manager's --horizontal-pod-autoscaler-tolerance default.
TOLERANCE = 0.1
# The column of bench.run's HTTP table that holds TorchServe's throughput.
RATE_COLUMN = "TorchServe img/s"


@dataclass(frozen=True)
class Autoscaling:
    """What the manifests say: replica bounds, CPU target (fraction of the request), CPU request (cores)."""

    min_replicas: int
    max_replicas: int
    target: float
    cpu_request: float


@dataclass(frozen=True)
class Plan:
    """Where the HPA settles for a load, and what that leaves."""

    replicas: int
    wanted: int  # before clamping to [min, max]
    utilisation: float  # per pod, fraction of the CPU request
    capacity: float  # req/s the settled pods can serve at saturation
    headroom: float  # capacity / load - 1
    lower_stable: bool  # an HPA at replicas - 1 would stay there (within tolerance)


def cpu_cores(quantity: str | int | float) -> float:
    """A Kubernetes CPU quantity ("3", "2500m", 2) in cores."""
    text = str(quantity)
    return int(text[:-1]) / 1000 if text.endswith("m") else float(text)


def read_autoscaling(base: Path = BASE) -> Autoscaling:
    """The HPA's bounds and CPU target, and the serving container's CPU request."""
    hpa = yaml.safe_load((base / "hpa.yaml").read_text())["spec"]
    deployment = yaml.safe_load((base / "deployment.yaml").read_text())
    (cpu_metric,) = [m for m in hpa["metrics"] if m["type"] == "Resource" and m["resource"]["name"] == "cpu"]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    return Autoscaling(
        min_replicas=hpa["minReplicas"],
        max_replicas=hpa["maxReplicas"],
        target=cpu_metric["resource"]["target"]["averageUtilization"] / 100,
        cpu_request=cpu_cores(container["resources"]["requests"]["cpu"]),
    )


def utilisation(load: float, replicas: int, pod_rate: float, pod_cores: float, cpu_request: float) -> float:
    """CPU use per pod as a fraction of its request when `replicas` pods share `load` req/s."""
    return load / replicas / pod_rate * pod_cores / cpu_request


def plan(load: float, pod_rate: float, pod_cores: float, scaling: Autoscaling) -> Plan:
    """The HPA's settling point for `load` req/s (see the module docstring)."""
    exact = load * pod_cores / (pod_rate * scaling.cpu_request * scaling.target)
    wanted = max(1, math.ceil(exact - 1e-9))  # 7.000000001 from float rounding is 7 pods
    replicas = min(max(wanted, scaling.min_replicas), scaling.max_replicas)
    below = replicas - 1
    lower_stable = (
        below >= scaling.min_replicas
        and utilisation(load, below, pod_rate, pod_cores, scaling.cpu_request) / scaling.target <= 1 + TOLERANCE
    )
    return Plan(
        replicas=replicas,
        wanted=wanted,
        utilisation=utilisation(load, replicas, pod_rate, pod_cores, scaling.cpu_request),
        capacity=replicas * pod_rate,
        headroom=replicas * pod_rate / load - 1,
        lower_stable=lower_stable,
    )


def table_cells(line: str) -> list[str]:
    """The cells of one markdown table row."""
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def rate_from_bench(table: str, image: str) -> float:
    """The best error-free TorchServe rate for `image` in `python -m bench.run`'s output (columns found by name)."""
    rates, columns = [], None
    for line in table.splitlines():
        if not line.startswith("|"):
            columns = None
        elif RATE_COLUMN in line and "errors" in line:
            columns = table_cells(line)
        elif columns and not line.startswith("|---"):
            row = dict(zip(columns, table_cells(line), strict=False))
            if row.get("image") == image and re.fullmatch(r"0/\d+", row.get("errors", "")):
                rates.append(float(row[RATE_COLUMN]))
    if not rates:
        raise ValueError(f"no error-free {RATE_COLUMN!r} row for {image!r} in the benchmark table")
    return max(rates)


def describe(load: float, pod_rate: float, pod_cores: float, scaling: Autoscaling, result: Plan) -> str:
    """The plan in words, for the README and the operator."""
    lines = [
        f"load {load:g} req/s; one pod saturates at {pod_rate:g} req/s using {pod_cores:g} of its "
        f"{scaling.cpu_request:g} requested cores; HPA target {scaling.target:.0%} CPU, "
        f"replicas {scaling.min_replicas}..{scaling.max_replicas}",
    ]
    if result.headroom < 0:
        lines.append(
            f"OVERLOADED: {result.replicas} replicas (maxReplicas) serve at most {result.capacity:g} req/s, "
            f"{load - result.capacity:g} req/s short; the HPA would want {result.wanted}"
        )
        return "\n".join(lines)
    lines += [
        f"HPA settles on {result.replicas} replicas at {result.utilisation:.0%} CPU each "
        f"({load / result.replicas:.1f} req/s per pod)",
        f"capacity {result.capacity:g} req/s: headroom {result.headroom:+.0%} before the pods saturate",
    ]
    if result.replicas < scaling.max_replicas:
        trigger = load * scaling.target * (1 + TOLERANCE) / result.utilisation
        lines.append(f"the HPA adds pods once the load passes {trigger:.0f} req/s")
    else:
        lines.append(f"WARNING: at maxReplicas; the HPA wants {result.wanted} and cannot add more")
    if result.lower_stable:
        below = utilisation(load, result.replicas - 1, pod_rate, pod_cores, scaling.cpu_request)
        lines.append(
            f"an HPA already at {result.replicas - 1} replicas stays there "
            f"({below:.0%} CPU is within the {TOLERANCE:.0%} tolerance)"
        )
    if (result.replicas - 1) * pod_rate < load:
        lines.append("losing one pod (drain, crash) saturates the rest until the HPA replaces it")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target-rps", type=float, required=True, help="request rate to plan for")
    rate = parser.add_mutually_exclusive_group(required=True)
    rate.add_argument("--pod-rate", type=float, help="req/s one pod serves at saturation (make bench)")
    rate.add_argument("--bench", type=argparse.FileType(), help="bench.run's output ('-': stdin); best clean row")
    parser.add_argument("--image", default="1024x768 JPEG", help="which image row of the benchmark to use")
    parser.add_argument(
        "--pod-cores",
        type=float,
        help="cores a saturated pod uses (bench.footprint); default: its whole CPU request",
    )
    args = parser.parse_args(argv)
    scaling = read_autoscaling()
    pod_rate = args.pod_rate if args.pod_rate is not None else rate_from_bench(args.bench.read(), args.image)
    pod_cores = args.pod_cores if args.pod_cores is not None else scaling.cpu_request
    if min(args.target_rps, pod_rate, pod_cores) <= 0:
        parser.error("the request rate, the pod rate and the pod's cores must be positive")
    print(describe(args.target_rps, pod_rate, pod_cores, scaling, plan(args.target_rps, pod_rate, pod_cores, scaling)))


if __name__ == "__main__":
    main()
