"""torch-model-archiver packs everything the handler needs, under one model name per version."""

import json
import zipfile

import yaml

from training.archive import SERVING_MODULES, archive_filename


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
        assert {f"training/{module}" for module in SERVING_MODULES} <= files
        assert "training/train.py" not in files
        assert config["batchSize"] > 1 and config["handler"]["torch_threads"] == 1
