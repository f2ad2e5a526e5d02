"""Pack a checkpoint into a TorchServe model archive (.mar) with torch-model-archiver.

python -m training.archive --weights weights/model.pt --version 1.0 --out model_store

Version 1.0 (the default model) becomes model_store/corruption.mar; any other
version becomes model_store/corruption-<version>.mar, all under the model name
"corruption" so they register as versions of one model. The archive holds the
weights, the handler, model-config.yaml and the serving modules of `training`,
so the server runs the same preprocessing code the model was trained with.
"""

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

MODEL_NAME = "corruption"
DEFAULT_VERSION = "1.0"
ROOT = Path(__file__).resolve().parent.parent
# The default model the project ships (MODEL_CARD.md).
SHIPPED_WEIGHTS = ROOT / "weights" / "model.pt"
HANDLER = ROOT / "handler" / "corruption_handler.py"
MODEL_CONFIG = ROOT / "handler" / "model-config.yaml"
# The part of `training` the server imports; the rest (data, train, ...) stays out.
SERVING_MODULES = ("__init__.py", "corruptions.py", "preprocessing.py", "model.py", "inference.py", "explain.py")


def archive_filename(version: str) -> str:
    """corruption.mar for the default version, corruption-<version>.mar otherwise."""
    return f"{MODEL_NAME}.mar" if version == DEFAULT_VERSION else f"{MODEL_NAME}-{version}.mar"


def build_archive(weights: Path, version: str = DEFAULT_VERSION, out_dir: Path = ROOT / "model_store") -> Path:
    """Build the archive and return its path (an existing one is replaced)."""
    if not weights.is_file():
        raise FileNotFoundError(f"no checkpoint at {weights}; train one or use the shipped weights/model.pt")
    archiver = Path(sys.executable).with_name("torch-model-archiver")
    with tempfile.TemporaryDirectory() as staging:
        package = Path(staging, "extra", "training")
        package.mkdir(parents=True)
        for module in SERVING_MODULES:
            shutil.copy2(ROOT / "training" / module, package / module)
        subprocess.run(
            [
                str(archiver),
                "--model-name",
                MODEL_NAME,
                "--version",
                version,
                "--serialized-file",
                str(weights),
                "--handler",
                str(HANDLER),
                "--extra-files",
                str(package.parent),
                "--config-file",
                str(MODEL_CONFIG),
                "--export-path",
                staging,
                "--force",
            ],
            check=True,
        )
        out_dir.mkdir(parents=True, exist_ok=True)
        target = out_dir / archive_filename(version)
        shutil.move(Path(staging, f"{MODEL_NAME}.mar"), target)
    return target


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=Path, default=SHIPPED_WEIGHTS)
    parser.add_argument("--version", default=DEFAULT_VERSION)
    parser.add_argument("--out", type=Path, default=ROOT / "model_store")
    args = parser.parse_args(argv)
    print(build_archive(args.weights, args.version, args.out))


if __name__ == "__main__":
    main()
