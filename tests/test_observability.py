"""The Grafana dashboard and the alerting rules against a real TorchServe scraped by a real Prometheus, so they
cannot drift from the server.

Prometheus runs the scrape job of observability/prometheus.yml (target and interval
replaced) with the rules of observability/rules.yml, and evaluates every query of
observability/grafana-dashboard.json and every recording rule after traffic of every
kind the dashboard shows: each must return series carrying the labels its legend and
grouping use. promtool checks the rules and runs their unit tests (rules.test.yml).
"""

import json
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests
import ts
import yaml

from bench.inputs import encode, sample_rgb
from bench.torchserve import ROOT, free_port
from handler import corruption_handler
from tests.helpers import TIMEOUT, heavy_noise

OBSERVABILITY = ROOT / "observability"
DASHBOARD = OBSERVABILITY / "grafana-dashboard.json"
SCRAPE_CONFIG = OBSERVABILITY / "prometheus.yml"
RULES = OBSERVABILITY / "rules.yml"
RULE_TESTS = OBSERVABILITY / "rules.test.yml"
# Debian's `prometheus` package (.ci/run installs it).
PROMETHEUS = shutil.which("prometheus")
PROMTOOL = shutil.which("promtool")
# What Grafana substitutes into the queries; the test server's model is "corruption".
VARIABLES = {"$__rate_interval": "1m", "${model}": "corruption", "$model": "corruption", "$version": ".*"}


def dashboard_targets() -> list[tuple[str, dict]]:
    """(panel title, target) for every query of the dashboard."""
    dashboard = json.loads(DASHBOARD.read_text())
    return [(panel["title"], target) for panel in dashboard["panels"] for target in panel["targets"]]


def substitute(expr: str) -> str:
    """The query as Grafana sends it for the test server."""
    for variable, value in VARIABLES.items():
        expr = expr.replace(variable, value)
    assert "$" not in expr, f"unknown dashboard variable in {expr}"
    return expr


def labels_used(target: dict) -> set[str]:
    """Labels a target's legend shows and its outer aggregations keep (`le` is consumed by histogram_quantile)."""
    legend = set(re.findall(r"{{\s*(\w+)\s*}}", target.get("legendFormat", "")))
    grouped = {
        label.strip() for group in re.findall(r"\bby\s*\(([^)]*)\)", target["expr"]) for label in group.split(",")
    }
    if "histogram_quantile" in target["expr"]:
        grouped.discard("le")
    return legend | grouped


def start_prometheus(metrics_url: str, workdir: Path) -> tuple[subprocess.Popen, str]:
    """Prometheus scraping `metrics_url` every second with the shipped job's settings."""
    config = yaml.safe_load(SCRAPE_CONFIG.read_text())
    job = config["scrape_configs"][0]
    job["static_configs"] = [{"targets": [urlsplit(metrics_url).netloc]}]
    job["scrape_interval"] = "1s"
    config["global"]["evaluation_interval"] = "1s"
    config["rule_files"] = [str(RULES)]
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
    address = f"127.0.0.1:{free_port()}"
    with open(workdir / "prometheus.log", "wb") as log:
        process = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={workdir / 'prometheus.yml'}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address={address}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    return process, f"http://{address}"


@pytest.fixture(scope="module")
def prometheus(torchserve, tmp_path_factory) -> Iterator[str]:
    """A real Prometheus scraping the session's TorchServe; its URL."""
    assert PROMETHEUS, "prometheus not found: apt-get install prometheus (see .ci/run)"
    workdir = tmp_path_factory.mktemp("prometheus")
    process, url = start_prometheus(torchserve.metrics, workdir)
    try:
        query_until(url, 'up{job="torchserve"} == 1', "Prometheus never scraped TorchServe", process)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=TIMEOUT)


def query(url: str, expr: str) -> list[dict]:
    """An instant query's result vector."""
    response = requests.get(f"{url}/api/v1/query", params={"query": expr}, timeout=TIMEOUT)
    assert response.status_code == 200, f"{expr}: {response.text}"
    return response.json()["data"]["result"]


def query_until(url: str, expr: str, failure: str, process: subprocess.Popen | None = None) -> list[dict]:
    """Poll until the query returns series (new series need a scrape or two)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert process is None or process.poll() is None, "Prometheus exited"
        try:
            if result := query(url, expr):
                return result
        except requests.ConnectionError:
            pass
        time.sleep(0.5)
    pytest.fail(f"{failure}: {expr}")


def send_traffic(torchserve, subset: Path) -> None:
    """A clean and a corrupted prediction, an explanation, a refused input and a 5xx (a version without workers)."""
    inference, management = torchserve.inference, torchserve.management
    clean = sample_rgb(subset)
    noisy = heavy_noise(clean)
    for image, path in ((clean, "predictions"), (noisy, "predictions"), (noisy, "explanations")):
        png = encode(image, "PNG")
        response = requests.post(f"{inference}/{path}/corruption", data=png, timeout=TIMEOUT)
        assert response.status_code == 200, response.text
    assert requests.post(f"{inference}/predictions/corruption", data=b"text", timeout=TIMEOUT).status_code == 400
    version = f"{management}/models/corruption/2.0"
    # The archive's model-config.yaml overrides initial_workers: register without waiting, then scale to none.
    params = {"url": "corruption-2.0.mar", "synchronous": "false"}
    registered = requests.post(f"{management}/models", params=params, timeout=TIMEOUT)
    assert registered.status_code == 202, registered.text
    try:
        scaled = requests.put(
            version, params={"min_worker": 0, "max_worker": 0, "synchronous": "true"}, timeout=TIMEOUT
        )
        assert scaled.status_code == 200, scaled.text
        unserved = requests.post(f"{inference}/predictions/corruption/2.0", data=b"x", timeout=TIMEOUT)
        assert unserved.status_code == 503, unserved.text
    finally:
        assert requests.delete(version, timeout=TIMEOUT).status_code == 200


def test_scrape_config_is_valid():
    assert PROMTOOL, "promtool not found: apt-get install prometheus (see .ci/run)"
    checked = subprocess.run([PROMTOOL, "check", "config", str(SCRAPE_CONFIG)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def promtool(*args: str) -> subprocess.CompletedProcess:
    assert PROMTOOL, "promtool not found: apt-get install prometheus (see .ci/run)"
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, cwd=OBSERVABILITY)


def test_rules_are_valid_and_pass_their_unit_tests():
    checked = promtool("check", "rules", str(RULES))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = promtool("test", "rules", str(RULE_TESTS))
    assert tested.returncode == 0, tested.stdout + tested.stderr


def recording_rules() -> list[str]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule["record"] for group in groups for rule in group["rules"] if "record" in rule]


def test_metrics_config_is_torchserves_default_plus_the_handlers_metrics():
    """metrics_config replaces TorchServe's file: dropping one of its metrics would silently stop exporting it."""
    ours = yaml.safe_load((OBSERVABILITY / "metrics.yaml").read_text())
    default = yaml.safe_load((Path(ts.__file__).parent / "configs" / "metrics.yaml").read_text())
    assert ours["ts_metrics"] == default["ts_metrics"]
    for kind, metrics in default["model_metrics"].items():
        assert all(metric in ours["model_metrics"][kind] for metric in metrics), kind
    handler_metrics = {name for name in vars(corruption_handler).values() if str(name).startswith("corruption_")}
    declared = {metric["name"] for metrics in ours["model_metrics"].values() for metric in metrics}
    assert handler_metrics and handler_metrics <= declared


def test_podmonitor_scrapes_the_pods_metrics_port():
    monitor = yaml.safe_load((OBSERVABILITY / "podmonitor.yaml").read_text())
    pod = yaml.safe_load((ROOT / "k8s" / "base" / "deployment.yaml").read_text())["spec"]["template"]
    ports = {port["name"]: port["containerPort"] for c in pod["spec"]["containers"] for port in c.get("ports", [])}
    metrics_port = int(re.search(r"^metrics_address=.*:(\d+)$", (ROOT / "config.properties").read_text(), re.M)[1])
    endpoint = monitor["spec"]["podMetricsEndpoints"][0]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    assert ports[endpoint["port"]] == metrics_port
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == str(metrics_port)
    assert pod["metadata"]["annotations"]["prometheus.io/path"] == endpoint["path"]


def test_dashboard_queries_stay_sound_to_check():
    """Without `or`/`unless`/`absent`, a non-empty result proves every metric in a query exists."""
    targets = dashboard_targets()
    assert len(targets) >= 10
    for title, target in targets:
        assert not re.search(r"\b(or|unless|absent|absent_over_time)\b", target["expr"]), title


def test_every_dashboard_query_returns_series_with_its_labels(torchserve, prometheus, subset):
    send_traffic(torchserve, subset)
    for title, target in dashboard_targets():
        expr = substitute(target["expr"])
        result = query_until(prometheus, expr, f"panel {title!r} gets no data from a real TorchServe")
        for series in result:
            missing = labels_used(target) - set(series["metric"])
            assert not missing, f"panel {title!r}: {expr} returns series without {missing}: {series['metric']}"


def test_every_recording_rule_returns_series_per_model_version(torchserve, prometheus, subset):
    """The rules' metric names and labels are the ones a real TorchServe exports; the handler's carry the version."""
    send_traffic(torchserve, subset)
    assert len(recording_rules()) >= 5
    for record in recording_rules():
        result = query_until(prometheus, record, f"recording rule {record} gets no data from a real TorchServe")
        versions = {series["metric"].get("ModelVersion") for series in result if "ModelName" in series["metric"]}
        assert not versions or ("1.0" in versions and None not in versions), f"{record}: {versions}"
