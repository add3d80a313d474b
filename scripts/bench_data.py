#!/usr/bin/env python
"""CIFAR-100 input-pipeline throughput (images/s), to compare with training throughput.

Measures, on the real files under ``--root`` (default: ``../shared/data/cifar100_partial`` when
present, else ``data/``) or on ``--synthetic N`` random images:

- ``decode``: :meth:`CIFAR100DataModule.setup` (train and test pickles -> uint8 tensors, incl. md5
  checks), once;
- ``loader``: iterating the train DataLoader for whole epochs (uint8 batches, CPU);
- ``augment train`` / ``normalise eval``: the batch transform alone on each device (crop + flip +
  normalise / normalise only), timed on resident batches;
- ``loader+transfer+augment``: what a training step receives: loader -> ``.to(device)`` -> train
  transform, per device;
- ``torchvision PIL baseline`` (``--baseline``): torchvision's ``CIFAR100`` with the per-sample
  ``RandomCrop(32, 4) + RandomHorizontalFlip + ToTensor + Normalize`` transforms, same batch size.

Each figure repeats full epochs until ``--min-time`` seconds have passed (after one warm-up epoch)
and reports images per second of wall time. CUDA timings synchronise before reading the clock.

    .venv/bin/python scripts/bench_data.py                      # shared partial data, CPU (+CUDA)
    .venv/bin/python scripts/bench_data.py --synthetic 50000    # full-size epoch, random pixels
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import torch

from crnn.data import ChecksumMismatchWarning, CIFAR100DataModule, TensorBatchDataset

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data" / "cifar100_partial"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_epochs(run_epoch, device: torch.device, min_time: float) -> float:
    """images/s over whole epochs of ``run_epoch() -> n_images`` (one warm-up epoch first)."""
    run_epoch()
    _sync(device)
    n, start = 0, time.perf_counter()
    while True:
        n += run_epoch()
        _sync(device)
        elapsed = time.perf_counter() - start
        if elapsed >= min_time:
            return n / elapsed


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", type=Path, default=SHARED if SHARED.is_dir() else REPO / "data")
    p.add_argument("--synthetic", type=int, default=0, help="use N random images instead of the files")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--val-size", type=float, default=0.1)
    p.add_argument("--num-workers", type=int, default=0)
    p.add_argument("--min-time", type=float, default=2.0, help="seconds of measurement per figure")
    p.add_argument("--device", action="append", help="cpu, cuda (default: cpu, and cuda when available)")
    p.add_argument("--verify-checksums", action="store_true", help="insist on the official md5s")
    p.add_argument("--baseline", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave as is)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = [
        torch.device(d) for d in (args.device or ["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
    ]

    dm = CIFAR100DataModule(
        root=args.root,
        batch_size=args.batch_size,
        val_size=args.val_size,
        num_workers=args.num_workers,
        download=False,
        verify_checksums=args.verify_checksums,
        shuffle_seed=0,
    )
    rows: list[tuple[str, str, float]] = []
    if args.synthetic:
        g = torch.Generator().manual_seed(0)
        images = torch.randint(0, 256, (args.synthetic, 3, 32, 32), dtype=torch.uint8, generator=g)
        labels = torch.randint(0, 100, (args.synthetic,), generator=g)
        dm.train_set = TensorBatchDataset(images, labels)
        source = f"synthetic: {args.synthetic} random images"
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ChecksumMismatchWarning)
            start = time.perf_counter()
            dm.setup("fit")
            decode_s = time.perf_counter() - start
        n_file = len(dm.train_set) + len(dm.val_set) + len(dm.test_set)
        rows.append(("decode train+test files (setup, md5 incl.)", "cpu", n_file / decode_s))
        source = f"{dm.folder} ({n_file} train + test records)"
    n_train = len(dm.train_set)
    loader = dm.train_dataloader()

    def loader_epoch() -> int:
        return sum(len(y) for _, y, _ in loader)

    rows.append(
        (
            "loader: train epoch (uint8 batches)",
            "cpu",
            timed_epochs(loader_epoch, torch.device("cpu"), args.min_time),
        )
    )

    for dev in devices:
        batches = [(x.to(dev), seed) for x, _, seed in loader]

        def augment_epoch(train: bool, batches=batches) -> int:
            for x, seed in batches:
                dm.transform_batch(x, seed=seed if train else None)
            return sum(len(x) for x, _ in batches)

        rows.append(
            (
                "augment train (crop+flip+normalise)",
                dev.type,
                timed_epochs(lambda: augment_epoch(True), dev, args.min_time),
            )
        )
        rows.append(
            ("normalise eval", dev.type, timed_epochs(lambda: augment_epoch(False), dev, args.min_time))
        )

        def full_epoch(dev=dev) -> int:
            n = 0
            for x, y, seed in loader:
                x = x.to(dev, non_blocking=True)
                y = y.to(dev, non_blocking=True)
                dm.transform_batch(x, seed=seed)
                n += len(y)
            return n

        rows.append(
            (
                "loader+transfer+augment (train step input)",
                dev.type,
                timed_epochs(full_epoch, dev, args.min_time),
            )
        )

    if args.baseline and not args.synthetic:
        from torchvision import transforms as T
        from torchvision.datasets import CIFAR100

        class Unchecked(CIFAR100):
            train_list = [["train", None]]
            test_list = [["test", None]]
            meta = {**CIFAR100.meta, "md5": None}

        tf = T.Compose(
            [
                T.RandomCrop(32, padding=4),
                T.RandomHorizontalFlip(),
                T.ToTensor(),
                T.Normalize(dm.augment.mean, dm.augment.std),
            ]
        )
        tv = Unchecked(str(args.root), train=True, transform=tf)
        tv_loader = torch.utils.data.DataLoader(
            tv, batch_size=args.batch_size, shuffle=True, num_workers=args.num_workers, drop_last=True
        )
        rate = timed_epochs(lambda: sum(len(y) for _, y in tv_loader), torch.device("cpu"), args.min_time)
        rows.append(("torchvision PIL per-sample baseline", "cpu", rate))

    print(f"CIFAR-100 input pipeline: {source}")
    print(
        f"train split {n_train} images, batch {args.batch_size}, num_workers {args.num_workers}, "
        f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads"
        + (f", {torch.cuda.get_device_name()}" if any(d.type == "cuda" for d in devices) else "")
    )
    width = max(len(r[0]) for r in rows)
    print(f"{'stage':<{width}}  {'device':<6}  {'images/s':>12}")
    for name, dev, rate in rows:
        print(f"{name:<{width}}  {dev:<6}  {rate:>12,.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
