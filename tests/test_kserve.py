"""KServe: the v1 and v2 (Open Inference Protocol) formats through TorchServe's own /v1 and /v2 routes, the archive
served the way KServe's TorchServe runtime serves it (k8s/kserve: its config, storage layout, arguments and
TS_SERVICE_ENVELOPE), and the InferenceService example."""

import base64
import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
import ts.version
import yaml

from bench.inputs import bad_images, good_images
from bench.torchserve import ROOT, TorchServe, launch, on_free_ports, ready
from tests.helpers import TIMEOUT, assert_same_answer

KSERVE = ROOT / "k8s" / "kserve"
# What KServe's kserve-torchserve ClusterServingRuntime sets: the envelope named by the protocol version.
KSERVE_ENV = {"TS_SERVICE_ENVELOPE": "kservev2"}


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def v2_body(*images: bytes, **extra) -> dict:
    tensor = {"name": "image", "datatype": "BYTES", "shape": [len(images)], "data": [b64(i) for i in images]}
    return {"inputs": [tensor], **extra}


def plain(server, data: bytes) -> dict:
    response = requests.post(f"{server.inference}/predictions/corruption", data=data, timeout=TIMEOUT)
    assert response.status_code == 200, response.text
    return response.json()


def post_json(url: str, body: dict) -> requests.Response:
    return requests.post(url, json=body, timeout=TIMEOUT)


def assert_v2_answers(response: requests.Response, expected: list[dict], version: str = "1.0") -> None:
    """The v2 response: model name and version, and named, typed outputs equal to the plain API's answers."""
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["model_name"], body["model_version"]) == ("corruption", version)
    outputs = {output["name"]: output for output in body["outputs"]}
    assert list(outputs) == ["label", "confidence", "probs"]
    assert outputs["label"]["datatype"] == "BYTES" and outputs["label"]["shape"] == [len(expected)]
    assert outputs["label"]["data"] == [answer["label"] for answer in expected]
    assert outputs["confidence"]["datatype"] == outputs["probs"]["datatype"] == "FP32"
    assert outputs["confidence"]["data"] == pytest.approx([answer["confidence"] for answer in expected], abs=1e-5)
    assert outputs["probs"]["shape"] == [len(expected), 2]
    pairs = [p for answer in expected for p in (answer["probs"]["clean"], answer["probs"]["corrupted"])]
    assert outputs["probs"]["data"] == pytest.approx(pairs, abs=1e-5)


@pytest.fixture(scope="module")
def images(subset) -> list[bytes]:
    good = good_images(subset)
    return [good["png"], good["jpeg"], good["large_webp"], good["grayscale"]]


# --- the handler's KServe formats through TorchServe's own routes


def test_v1_predict_and_explain(torchserve, images):
    expected = [plain(torchserve, image) for image in images]
    body = {"instances": [b64(images[0]), {"data": b64(images[1])}, {"b64": b64(images[2])}, b64(images[3])]}
    predicted = post_json(f"{torchserve.inference}/v1/models/corruption:predict", body)
    assert predicted.status_code == 200, predicted.text
    assert list(predicted.json()) == ["predictions"]
    for answer, wanted in zip(predicted.json()["predictions"], expected, strict=True):
        assert_same_answer(answer, wanted)
    explained = post_json(f"{torchserve.inference}/v1/models/corruption:explain", {"instances": [b64(images[0])]})
    assert explained.status_code == 200, explained.text
    (explanation,) = explained.json()["explanations"]
    assert_same_answer({key: explanation[key] for key in expected[0]}, expected[0])
    assert explanation["explanation"]["method"] == "grad-cam"


def test_v2_infer_answers_named_typed_outputs(torchserve, images):
    expected = [plain(torchserve, image) for image in images]
    response = post_json(f"{torchserve.inference}/v2/models/corruption/infer", v2_body(*images, id="req-42"))
    assert_v2_answers(response, expected)
    assert response.json()["id"] == "req-42"
    only = post_json(
        f"{torchserve.inference}/v2/models/corruption/infer", v2_body(images[0], outputs=[{"name": "probs"}])
    )
    assert [output["name"] for output in only.json()["outputs"]] == ["probs"]


def test_a_json_file_posted_as_a_form_is_refused_with_how_to_send_it(torchserve, images):
    """`curl -d @body.json` without a Content-Type sends a form, which TorchServe 0.12 garbles: a clear 400."""
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    response = requests.post(f"{torchserve.inference}/v2/models/corruption/infer", data=json.dumps(v2_body(*images)),
                             headers=headers, timeout=TIMEOUT)  # fmt: skip
    assert response.status_code == 400, response.text
    assert response.json()["type"] == "form_encoded_body"
    assert "-H 'Content-Type: application/json'" in response.json()["message"]


def test_concurrent_kserve_requests_are_batched_and_each_gets_its_own_answer(torchserve, images, subset):
    """TorchServe batches requests of every protocol together; each still gets its own images' answers."""
    expected = {image: plain(torchserve, image) for image in images}
    bad, reason = bad_images(subset)["truncated_png"]
    cases = [images[i % 4 : i % 4 + 1 + i % 3] for i in range(15)] + [[images[0], bad]]

    def send(case: list[bytes]) -> requests.Response:
        return post_json(f"{torchserve.inference}/v2/models/corruption/infer", v2_body(*case))

    with ThreadPoolExecutor(max_workers=len(cases)) as pool:
        responses = list(pool.map(send, cases))
    for case, response in zip(cases[:-1], responses[:-1], strict=True):
        assert_v2_answers(response, [expected[image] for image in case])
    assert responses[-1].status_code == 400
    assert responses[-1].json()["type"] == reason and responses[-1].json()["error"]


@pytest.mark.parametrize(
    "path, body, reason",
    [
        ("v1/models/corruption:predict", {"instances": []}, "invalid_kserve_request"),
        ("v1/models/corruption:predict", {"instances": ["bm90IGFuIGltYWdl"]}, "not_an_image"),
        ("v2/models/corruption/infer", {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1.0]}]},
         "invalid_kserve_request"),
    ],
)  # fmt: skip
def test_bad_kserve_requests_get_400_with_an_error_field(torchserve, path, body, reason):
    response = post_json(f"{torchserve.inference}/{path}", body)
    assert response.status_code == 400, response.text
    assert response.json()["type"] == reason
    assert response.json()["error"] == response.json()["message"]


# --- the archive under KServe's TorchServe runtime (k8s/kserve)


def kserve_config(storage: Path, workdir: Path) -> tuple[Path, dict[str, str]]:
    """The storage's config.properties with the storage's real path for /mnt/models and free loopback ports."""
    path = storage / "config" / "config.properties"
    text, urls = on_free_ports(path.read_text().replace("/mnt/models", str(storage)), workdir)
    path.write_text(text)
    return path, urls


@pytest.fixture(scope="module")
def kserve_storage(model_store, tmp_path_factory) -> Path:
    """The storageUri's content, laid out by storage.sh as the README says."""
    storage = tmp_path_factory.mktemp("mnt-models")
    laid_out = subprocess.run(["sh", str(KSERVE / "storage.sh"), str(storage), str(model_store / "corruption.mar")],
                              cwd=ROOT, capture_output=True, text=True)  # fmt: skip
    assert laid_out.returncode == 0, laid_out.stderr
    return storage


@pytest.fixture(scope="module")
def kserve_server(kserve_storage, tmp_path_factory) -> Iterator[TorchServe]:
    """TorchServe started as the kserve-torchserve runtime starts it, from a copy of that storage."""
    storage, workdir = tmp_path_factory.mktemp("kserve-storage"), tmp_path_factory.mktemp("kserve")
    shutil.copytree(kserve_storage, storage, dirs_exist_ok=True)
    config, urls = kserve_config(storage, workdir)
    # The runtime's own command line (not the project's): no --ncs, `=` between flags and values.
    command = ["torchserve", "--start", "--foreground", f"--model-store={storage / 'model-store'}",
               f"--ts-config={config}"]  # fmt: skip
    with ready(launch(command, workdir, urls, env=KSERVE_ENV)) as server:
        yield server


def test_kserve_runtime_serves_v1_and_v2_with_batching_intact(kserve_server, images):
    """KServe's TS_SERVICE_ENVELOPE is ignored (no enable_envvars_config): concurrent requests keep every image."""
    expected = [plain(kserve_server, image) for image in images]
    url = f"{kserve_server.inference}/v2/models/corruption/infer"
    with ThreadPoolExecutor(max_workers=8) as pool:
        responses = list(pool.map(lambda _: post_json(url, v2_body(*images)), range(8)))
    for response in responses:
        assert_v2_answers(response, expected)
    v1 = post_json(f"{kserve_server.inference}/v1/models/corruption:predict", {"instances": [b64(images[0])]})
    assert_same_answer(v1.json()["predictions"][0], expected[0])


def test_kserve_runtime_exports_the_handlers_metrics(kserve_server, images):
    plain(kserve_server, images[0])
    metrics = requests.get(f"{kserve_server.metrics}/metrics", timeout=TIMEOUT).text
    assert re.search(r'corruption_predictions_total\{[^}]*ModelVersion="1.0"', metrics), metrics[-2000:]


# --- the example's files


def test_the_inference_service_uses_the_stock_torchserve_runtime_of_the_tested_release():
    (service,) = [doc for doc in yaml.safe_load_all((KSERVE / "inferenceservice.yaml").read_text()) if doc]
    assert (service["apiVersion"], service["kind"]) == ("serving.kserve.io/v1beta1", "InferenceService")
    predictor = service["spec"]["predictor"]
    model = predictor["model"]
    assert model["modelFormat"] == {"name": "pytorch"} and model["runtime"] == "kserve-torchserve"
    assert model["runtimeVersion"] == ts.version.__version__
    assert model["protocolVersion"] in ("v1", "v2") and model["storageUri"]
    deployment = yaml.safe_load((ROOT / "k8s" / "base" / "deployment.yaml").read_text())
    (container,) = [c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "torchserve"]
    assert model["resources"] == container["resources"], "sized like the plain Deployment's TorchServe (k8s/README.md)"
    kustomization = yaml.safe_load((KSERVE / "kustomization.yaml").read_text())
    assert kustomization["resources"] == ["inferenceservice.yaml"]


def properties(path: Path) -> dict[str, str]:
    lines = [line.split("=", 1) for line in path.read_text().splitlines() if line and not line.startswith("#")]
    return {key.strip(): value.strip() for key, value in lines}


def test_the_kserve_config_is_the_projects_with_the_storages_paths_and_no_envelopes(kserve_storage):
    ours, project = properties(kserve_storage / "config" / "config.properties"), properties(ROOT / "config.properties")
    assert "enable_envvars_config" not in ours and "service_envelope" not in ours
    assert ours.pop("model_store") == "/mnt/models/model-store"
    assert ours.pop("metrics_config") == "/mnt/models/config/metrics.yaml"
    assert {key: value for key, value in project.items() if key not in ("model_store", "metrics_config",
            "enable_envvars_config")} == ours  # fmt: skip
    assert ours["inference_address"].endswith(":8080"), "KServe sends predictor traffic to port 8080"
    assert ours["metrics_address"].endswith(":8082"), "kserve-torchserve's prometheus.kserve.io/port"
    assert (kserve_storage / "config" / "metrics.yaml").read_text() == (ROOT / "observability/metrics.yaml").read_text()
