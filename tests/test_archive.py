"""torch-model-archiver packs everything the handler needs, under one model name per version."""

import json
import zipfile

import pytest
import yaml

from detector.paths import SHIPPED_WEIGHTS
from handler.archive import archive_filename, core_modules, verify_archive


def test_versions_get_their_own_file_names():
    assert archive_filename("1.0") == "corruption.mar"
    assert archive_filename("2.0") == "corruption-2.0.mar"


def test_archives_hold_weights_handler_config_and_serving_code(model_store):
    for name, version in (("corruption.mar", "1.0"), ("corruption-2.0.mar", "2.0")):
        with zipfile.ZipFile(model_store / name) as archive:
            files = set(archive.namelist())
            manifest = json.loads(archive.read("MAR-INF/MANIFEST.json"))
            config = yaml.safe_load(archive.read("model-config.yaml"))
        assert manifest["model"]["modelName"] == "corruption"
        assert manifest["model"]["modelVersion"] == version
        assert manifest["model"]["handler"] == "corruption_handler.py"
        assert {"model.pt", "corruption_handler.py", "model-config.yaml"} <= files
        assert {f"detector/{module.name}" for module in core_modules()} <= files
        assert not any(name.startswith(("training/", "evaluation/")) for name in files), "only the core is packed"
        assert config["batchSize"] > 1 and config["handler"]["torch_threads"] == 1


def test_the_core_is_packed_whole():
    assert {module.name for module in core_modules()} >= {"corruptions.py", "preprocessing.py", "model.py",
                                                          "inference.py", "explain.py"}  # fmt: skip


def test_an_archive_without_the_weights_is_refused(tmp_path):
    archive = tmp_path / "broken.mar"
    with zipfile.ZipFile(archive, "w") as packed:
        packed.writestr("corruption_handler.py", "")
    with pytest.raises(RuntimeError, match="missing"):
        verify_archive(archive, SHIPPED_WEIGHTS)
