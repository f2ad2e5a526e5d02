"""Average the weights of runs fine-tuned from one checkpoint (a uniform "model soup", Wortsman et al. 2022),
then calibrate the average as training calibrates a run.

Why: seeds of one recipe differ by as much as the levers this project compares (stop 32: AUROC 0.947 and 0.969
for seeds 1 and 2 on the source-held-out test), so shipping one seed is shipping a draw, and picking the best
seed on the test is choosing on the test. The average of every seed run takes no choice and costs one model
at serving time. Averaging is only meaningful between runs that start from the same weights (they stay in one
basin), so the ingredients must share their starting checkpoint.

`python -m training.soup --out checkpoints/soup/model.pt A/model.pt B/model.pt` writes the calibrated soup and,
beside it, training.json with each ingredient's training summary and the soup's calibration.
"""

import argparse
import json
from pathlib import Path
from typing import Any

import torch

from detector.model import CALIBRATION_BUFFERS, build_model, read_checkpoint, save_checkpoint
from training.calibrate import add_calibration_arguments, cifar_split_seed, recalibrate
from training.corpus import sha256
from training.train import read_training_log, write_training_log


class IngredientMismatchError(ValueError):
    """Checkpoints that cannot be averaged: another backbone, or not fine-tuned from the same checkpoint."""


def check_ingredients(checkpoints: list[dict[str, Any]], calibration_split: int | None = None) -> None:
    """Refuse a soup of fewer than two runs, of runs on different backbones or from different starting weights, and,
    without `calibration_split`, of runs that did not hold out one CIFAR split: an offset fitted on images an
    ingredient trained on is fitted on learnt images."""
    if len(checkpoints) < 2:
        raise IngredientMismatchError("a soup needs at least two checkpoints")
    backbones = {checkpoint["backbone"] for checkpoint in checkpoints}
    starts = {checkpoint["metadata"].get("init_sha256") for checkpoint in checkpoints}
    if len(backbones) > 1:
        raise IngredientMismatchError(f"the checkpoints have different backbones: {sorted(backbones)}")
    if None in starts or len(starts) > 1:
        raise IngredientMismatchError("the checkpoints were not all fine-tuned (--init) from one checkpoint")
    if calibration_split is None and shared_cifar_split(checkpoints) is None:
        raise IngredientMismatchError(
            "the checkpoints do not record one held-out CIFAR split (training.train --cifar-split-seed): "
            "name the split to calibrate on with --cifar-split-seed"
        )


def shared_cifar_split(checkpoints: list[dict[str, Any]]) -> int | None:
    """The CIFAR validation split every ingredient held out (training.train --cifar-split-seed), or None."""
    splits = {checkpoint["metadata"].get("cifar_split_seed") for checkpoint in checkpoints}
    return splits.pop() if len(splits) == 1 else None


def average_weights(checkpoints: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """The mean of every floating-point tensor but the calibration (refitted after), in fp32; integer buffers
    (batch-norm step counts) are taken from the first checkpoint."""
    first = checkpoints[0]["state_dict"]
    return {
        name: torch.stack([checkpoint["state_dict"][name].float() for checkpoint in checkpoints]).mean(0)
        if tensor.is_floating_point() and name not in CALIBRATION_BUFFERS
        else tensor
        for name, tensor in first.items()
    }


def soup_metadata(paths: list[Path], checkpoints: list[dict[str, Any]]) -> dict[str, Any]:
    """The first ingredient's lineage, every photo any ingredient learnt from (seen sources for the evaluation),
    and what each ingredient was."""
    metadata = checkpoints[0]["metadata"]
    held_out = shared_cifar_split(checkpoints)
    return {
        **({"cifar_split_seed": held_out} if held_out is not None else {}),
        "backbone": checkpoints[0]["backbone"],
        "init_sha256": metadata["init_sha256"],
        "ancestors": metadata.get("ancestors", []),
        "training_photos": {
            photo: group
            for checkpoint in checkpoints
            for photo, group in checkpoint["metadata"].get("training_photos", {}).items()
        },
        "soup_of": [
            {"sha256": sha256(path.read_bytes()), "steps": checkpoint["metadata"].get("steps")}
            for path, checkpoint in zip(paths, checkpoints, strict=True)
        ],
    }


def make_soup(paths: list[Path], out: Path, calibration_split: int | None = None) -> list[dict[str, Any]]:
    """Write the uncalibrated average of the checkpoints at `paths` to `out`; returns what each ingredient was
    (its checksum and steps, as the soup's metadata records them). Without `calibration_split` the soup is to be
    calibrated on the CIFAR split its ingredients held out."""
    checkpoints = [read_checkpoint(path) for path in paths]
    check_ingredients(checkpoints, calibration_split)
    model = build_model(checkpoints[0]["backbone"])
    model.load_state_dict(average_weights(checkpoints))
    metadata = soup_metadata(paths, checkpoints)
    save_checkpoint(model, out, metadata)
    return metadata["soup_of"]


def ingredient_summary(path: Path, record: dict[str, Any]) -> dict[str, Any]:
    """An ingredient's record and its training.json (arguments, loss history) when it has one beside it."""
    return {"checkpoint": str(path), **record, **read_training_log(path)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Average fine-tuned checkpoints' weights and calibrate the average.")
    parser.add_argument("ingredients", type=Path, nargs="+", help="checkpoints fine-tuned from one --init")
    parser.add_argument("--out", type=Path, required=True, help="where the soup's model.pt goes")
    add_calibration_arguments(parser)
    args = parser.parse_args(argv)
    records = make_soup(args.ingredients, args.out, args.cifar_split_seed)
    args.cifar_split_seed = cifar_split_seed(args.out, args)  # resolved once: recalibrated on it, recorded with it
    calibration = recalibrate(args.out, args)
    ingredients = [ingredient_summary(path, record) for path, record in zip(args.ingredients, records, strict=True)]
    summary = {"soup_of": ingredients, "cifar_split_seed": args.cifar_split_seed, "calibration": calibration}
    write_training_log(args.out, summary)
    print(f"saved {args.out}; calibration {json.dumps(calibration)}")


if __name__ == "__main__":
    main()
