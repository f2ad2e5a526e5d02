"""Train the clean-vs-corrupted classifier.

python -m training.train --data ../shared/data/cifar10-subset/train --epochs 40 --out weights

A seeded fraction of the clean images (--val-fraction) is held out for
validation and model selection; the best epoch by validation balanced accuracy
is saved to OUT/model.pt (fp16) with OUT/training.json (arguments and history).
"""

import argparse
import json
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from training.data import CorruptionDataset, load_clean_images, split_indices
from training.evaluate import score, summarise
from training.model import build_model, save_checkpoint


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="folder of clean images (recursive) or 'cifar10' to download it")
    parser.add_argument("--download-root", type=Path, default=Path("data"), help="where 'cifar10' is downloaded")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3, help="peak learning rate of the one-cycle AdamW schedule")
    parser.add_argument("--weight-decay", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit", type=int, default=None, help="use only the first N clean images (quick runs)")
    parser.add_argument("--val-fraction", type=float, default=0.1)
    parser.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: 0 on CPU, 4 on CUDA)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--out", type=Path, default=Path("checkpoints"))
    return parser.parse_args(argv)


def resolve_device(name: str) -> torch.device:
    """'auto' picks CUDA when present, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def train_one_epoch(
    model: nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    device: torch.device,
    epoch: int,
) -> float:
    """One pass over the training set; returns the mean training loss."""
    model.train()
    total, count = 0.0, 0
    progress = tqdm(loader, desc=f"epoch {epoch}", unit="batch", leave=False)
    for images, labels, _, _ in progress:
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = nn.functional.cross_entropy(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        total += loss.item() * len(labels)
        count += len(labels)
        progress.set_postfix(loss=f"{total / count:.4f}")
    return total / count


def format_epoch(epoch: int, loss: float, metrics: dict) -> str:
    """One log line per epoch: loss, validation accuracy, clean FPR, detection rate per kind."""
    kinds = " ".join(f"{kind}={rate:.1%}" for kind, rate in metrics["detection_rate"].items())
    return (
        f"epoch {epoch}: train_loss={loss:.4f} val_acc={metrics['accuracy']:.1%} "
        f"clean_fpr={metrics['clean_false_positive_rate']:.1%} detection: {kinds}"
    )


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    device = resolve_device(args.device)
    workers = args.workers if args.workers is not None else (4 if device.type == "cuda" else 0)

    images = load_clean_images(args.data, limit=args.limit, train=True, download_root=args.download_root)
    train_idx, val_idx = split_indices(len(images), args.val_fraction, args.seed)
    train_set = CorruptionDataset(images[train_idx], seed=args.seed, augment=True)
    val_set = CorruptionDataset(images[val_idx], seed=args.seed + 1)
    loader = DataLoader(
        train_set,
        batch_size=args.batch_size,
        shuffle=True,
        num_workers=workers,
        drop_last=len(train_set) > args.batch_size,
        persistent_workers=workers > 0,
        generator=torch.Generator().manual_seed(args.seed),
    )

    model = build_model().to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=args.lr, epochs=args.epochs, steps_per_epoch=len(loader)
    )
    print(
        f"training on {device}: {len(train_set)} samples ({len(train_idx)} clean images), "
        f"validating on {len(val_set)} samples"
    )

    history, best = [], None
    started = time.monotonic()
    for epoch in range(1, args.epochs + 1):
        train_set.set_epoch(epoch)
        loss = train_one_epoch(model, loader, optimizer, scheduler, device, epoch)
        metrics = summarise(score(model, val_set, device, workers=workers, progress=False))
        history.append({"epoch": epoch, "train_loss": loss, **metrics})
        tqdm.write(format_epoch(epoch, loss, metrics))
        if best is None or metrics["balanced_accuracy"] > best["balanced_accuracy"]:
            best = history[-1]
            save_checkpoint(model, args.out / "model.pt", {"epoch": epoch, "validation": metrics})
    summary = {
        "arguments": {k: str(v) for k, v in vars(args).items()},
        "device": str(device),
        "seconds": round(time.monotonic() - started),
        "best_epoch": best["epoch"],
        "history": history,
    }
    (args.out / "training.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(
        f"best epoch {best['epoch']} (val balanced accuracy {best['balanced_accuracy']:.1%}) "
        f"saved to {args.out / 'model.pt'}"
    )


if __name__ == "__main__":
    main()
