"""Pack a checkpoint with this handler into a TorchServe model archive (.mar) with torch-model-archiver.

python -m handler.archive --weights weights/model.pt --version 1.0 --out model_store

Version 1.0 (the default model) becomes model_store/corruption.mar; any other
version becomes model_store/corruption-<version>.mar, all under the model name
"corruption" so they register as versions of one model. The archive holds the
weights, the handler with its sibling modules and model-config.yaml (this folder,
less this packer), and the whole `detector` package (the serving core), so the
server runs the very code the model was trained with.
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from detector.paths import ROOT, SHIPPED_WEIGHTS

MODEL_NAME = "corruption"
DEFAULT_VERSION = "1.0"
HERE = Path(__file__).resolve().parent
HANDLER = HERE / "corruption_handler.py"
MODEL_CONFIG = HERE / "model-config.yaml"
# The serving core, packed whole: what is served cannot drift from what the core imports.
CORE = ROOT / "detector"


def archive_filename(version: str) -> str:
    """corruption.mar for the default version, corruption-<version>.mar otherwise."""
    return f"{MODEL_NAME}.mar" if version == DEFAULT_VERSION else f"{MODEL_NAME}-{version}.mar"


def core_modules() -> list[Path]:
    """The serving core's source files, as packed into every archive."""
    return sorted(CORE.glob("*.py"))


def handler_modules() -> list[Path]:
    """The handler's sibling modules, packed as the `handler` package beside it (imported as handler.<module>, in
    the archive as in this repository): this folder but the handler and the packer."""
    return sorted(path for path in HERE.glob("*.py") if path not in (HANDLER, Path(__file__).resolve()))


def build_archive(weights: Path, version: str = DEFAULT_VERSION, out_dir: Path = ROOT / "model_store") -> Path:
    """Build the archive and return its path (an existing one is replaced); check that it holds what serving needs.

    torch-model-archiver stages its files in <tempdir>/<model name>: it runs with a private TMPDIR,
    so two builds at once (a test and a `make archive`) cannot mix their files.
    """
    if not weights.is_file():
        raise FileNotFoundError(f"no checkpoint at {weights}; train one or use the shipped weights/model.pt")
    archiver = Path(sys.executable).with_name("torch-model-archiver")
    with tempfile.TemporaryDirectory() as staging:
        package = Path(staging, "extra", CORE.name)
        package.mkdir(parents=True)
        for module in core_modules():
            shutil.copy2(module, package / module.name)
        (package.parent / HERE.name).mkdir()
        for module in handler_modules():
            shutil.copy2(module, package.parent / HERE.name / module.name)
        private_tmp = Path(staging, "tmp")
        private_tmp.mkdir()
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
            env={**os.environ, "TMPDIR": str(private_tmp)},
        )
        built = Path(staging, f"{MODEL_NAME}.mar")
        verify_archive(built, weights)
        out_dir.mkdir(parents=True, exist_ok=True)
        target = out_dir / archive_filename(version)
        shutil.move(built, target)
    return target


def verify_archive(archive: Path, weights: Path) -> None:
    """Refuse an archive that lacks the weights (byte for byte), the handler, its config or any core module."""
    with zipfile.ZipFile(archive) as packed:
        names = set(packed.namelist())
        packed_modules = [f"{HERE.name}/{m.name}" for m in handler_modules()] + [
            f"{CORE.name}/{m.name}" for m in core_modules()
        ]
        expected = {weights.name, HANDLER.name, MODEL_CONFIG.name, *packed_modules}
        missing = sorted(expected - names)
        if missing:
            raise RuntimeError(f"{archive} is incomplete: missing {', '.join(missing)}")
        if packed.read(weights.name) != weights.read_bytes():
            raise RuntimeError(f"{archive} holds other weights than {weights}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=Path, default=SHIPPED_WEIGHTS)
    parser.add_argument("--version", default=DEFAULT_VERSION)
    parser.add_argument("--out", type=Path, default=ROOT / "model_store")
    args = parser.parse_args(argv)
    print(build_archive(args.weights, args.version, args.out))


if __name__ == "__main__":
    main()
