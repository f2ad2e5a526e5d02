"""Train the clean-vs-corrupted classifier with its corruption-type head.

python -m training.train --data ../shared/data/cifar10-subset/train --epochs 40 --out weights

A seeded fraction of the `--data` images (--val-fraction) is held out for
validation, model selection and calibration; `--extra-data` folders add clean
images for training only. The best epoch by validation balanced accuracy is
saved to OUT/model.pt (fp16), calibrated on the validation split
(training/calibrate.py), with OUT/training.json (arguments and history).

Several processes (GPUs or nodes): `torchrun --nproc_per_node N -m training.train ...`
trains with DistributedDataParallel; each rank sees its shard of every epoch, rank 0
validates and saves, and training.json records every rank's parameter checksum.
"""

import argparse
import json
import os
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from detector.corruptions import KIND_TYPES
from detector.model import CorruptionNet, build_model, load_model, save_checkpoint
from evaluation.metrics import score, summarise
from training.calibrate import calibrate_checkpoint
from training.data import CorruptionDataset, load_clean_images, split_indices


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="folder of clean images (recursive) or 'cifar10' to download it")
    parser.add_argument(
        "--extra-data", nargs="*", default=[], help="more folders of clean images, for training only (not validation)"
    )
    parser.add_argument("--download-root", type=Path, default=Path("data"), help="where 'cifar10' is downloaded")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=64, help="per process")
    parser.add_argument("--lr", type=float, default=1e-3, help="peak learning rate of the one-cycle AdamW schedule")
    parser.add_argument("--weight-decay", type=float, default=0.05)
    parser.add_argument("--type-loss-weight", type=float, default=0.5, help="weight of the corruption-type head's loss")
    parser.add_argument("--target-fpr", type=float, default=0.02, help="clean false-positive rate to calibrate for")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit", type=int, default=None, help="use only the first N images of each source")
    parser.add_argument("--val-fraction", type=float, default=0.1)
    parser.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: 0 on CPU, 4 on CUDA)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (torchrun: cuda:LOCAL_RANK)")
    parser.add_argument("--init", type=Path, default=None, help="start from this checkpoint's weights (fine-tuning)")
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


def initial_model(path: Path) -> CorruptionNet:
    """A checkpoint's weights to fine-tune, with its calibration reset: calibrate_checkpoint fits it anew."""
    model = load_model(path)
    model.temperature.fill_(1.0)
    model.corrupted_logit_offset.zero_()
    return model


def training_images(args: argparse.Namespace) -> tuple[torch.Tensor, torch.Tensor]:
    """(training images, validation images): validation comes from --data only."""
    images = load_clean_images(args.data, limit=args.limit, train=True, download_root=args.download_root)
    train_idx, val_idx = split_indices(len(images), args.val_fraction, args.seed)
    extra = [load_clean_images(folder, limit=args.limit) for folder in args.extra_data]
    return torch.cat([images[train_idx], *extra]), images[val_idx]


def train_one_epoch(
    model: nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    device: torch.device,
    epoch: int,
    type_loss_weight: float,
) -> float:
    """One pass over this process's share of the training set; returns its mean loss."""
    model.train()
    total, count = 0.0, 0
    memory_format = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    progress = tqdm(loader, desc=f"epoch {epoch}", unit="batch", leave=False)
    kind_types = torch.tensor(KIND_TYPES)
    for images, labels, kinds, _ in progress:
        images = images.to(device, non_blocking=True, memory_format=memory_format)
        labels, types = labels.to(device, non_blocking=True), kind_types[kinds].to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            binary_logits, type_logits = model(images)
            loss = nn.functional.cross_entropy(binary_logits, labels)
            loss = loss + type_loss_weight * nn.functional.cross_entropy(type_logits, types)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        total += loss.item() * len(labels)
        count += len(labels)
        progress.set_postfix(loss=f"{total / count:.4f}")
    return total / count


class BothHeads(nn.Module):
    """Training view of the detector: forward returns both heads, as DistributedDataParallel needs."""

    def __init__(self, model: CorruptionNet) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.heads(images)


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


def format_epoch(epoch: int, loss: float, metrics: dict) -> str:
    """One log line per epoch: loss, validation accuracy, clean FPR, detection rate per kind."""
    kinds = " ".join(f"{kind}={rate:.1%}" for kind, rate in metrics["detection_rate"].items())
    return (
        f"epoch {epoch}: train_loss={loss:.4f} val_acc={metrics['accuracy']:.1%} "
        f"clean_fpr={metrics['clean_false_positive_rate']:.1%} detection: {kinds}"
    )


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    device = resolve_device(args.device)
    rank, world_size = start_distributed(device)
    torch.manual_seed(args.seed)
    workers = args.workers if args.workers is not None else (4 if device.type == "cuda" else 0)

    train_images, val_images = training_images(args)
    train_set = CorruptionDataset(train_images, seed=args.seed, augment=True)
    val_set = CorruptionDataset(val_images, seed=args.seed + 1)
    sampler = DistributedSampler(train_set, world_size, rank, seed=args.seed, drop_last=True)
    loader = DataLoader(
        train_set,
        batch_size=args.batch_size,
        sampler=sampler,
        num_workers=workers,
        drop_last=len(train_set) > args.batch_size * world_size,
        persistent_workers=workers > 0,
        pin_memory=device.type == "cuda",
    )

    model = (initial_model(args.init) if args.init else build_model()).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    trainer: nn.Module = BothHeads(model)
    if world_size > 1:
        trainer = DistributedDataParallel(trainer, device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=args.lr, epochs=args.epochs, steps_per_epoch=len(loader)
    )
    if rank == 0:
        print(
            f"training on {world_size} x {device}: {len(train_set)} samples ({len(train_images)} clean images), "
            f"validating on {len(val_set)} samples"
        )

    history, best = [], None
    started = time.monotonic()
    for epoch in range(1, args.epochs + 1):
        train_set.set_epoch(epoch)
        sampler.set_epoch(epoch)
        loss = train_one_epoch(trainer, loader, optimizer, scheduler, device, epoch, args.type_loss_weight)
        if rank != 0:
            continue
        metrics = summarise(score(model, val_set, device, workers=workers, progress=False))
        history.append({"epoch": epoch, "train_loss": loss, **metrics})
        tqdm.write(format_epoch(epoch, loss, metrics))
        if best is None or metrics["balanced_accuracy"] > best["balanced_accuracy"]:
            best = history[-1]
            save_checkpoint(model, args.out / "model.pt", {"epoch": epoch, "validation": metrics})
    checksums = gather_checksums(model, world_size)
    if rank == 0:
        seconds = round(time.monotonic() - started)
        calibration = calibrate_checkpoint(args.out / "model.pt", val_set, args.target_fpr, device)
        summary = {
            "arguments": {k: str(v) for k, v in vars(args).items()},
            "device": f"{world_size} x {device}",
            "seconds": seconds,
            "best_epoch": best["epoch"],
            "calibration": calibration,
            "rank_parameter_checksums": checksums,
            "history": history,
        }
        (args.out / "training.json").write_text(json.dumps(summary, indent=2) + "\n")
        print(
            f"best epoch {best['epoch']} (val balanced accuracy {best['balanced_accuracy']:.1%}) "
            f"saved to {args.out / 'model.pt'}; calibration {calibration}"
        )
    if world_size > 1:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
