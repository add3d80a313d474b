#!/usr/bin/env python
"""Training throughput of a CIFAR classifier per layer type (a benchmark, not a test), for a GPU.

Builds ``backbone`` (default ResNet-20) + ``rnn=<layer>`` + ``head=linear`` from the repository's
``conf/`` files (the models ``crnn-train`` builds), then times training steps (forward,
cross-entropy, backward, a step of the configured optimizer, ``task.optimizer``; batch 128 of random
3x32x32 images already on the device, so data loading is not measured) for every layer in
``--layers``, in interleaved rounds (each round runs ``--steps`` steps of every model; medians over
``--rounds``), and prints images/s and the ratio to ``rnn=none``. ``--epoch`` also times one
CIFAR-100 training epoch (50,000 images = 391 steps) per layer on the same random data.

On a GPU: ``--precision bf16`` (default; ``trainer=gpu``'s ``bf16-mixed``), ``16`` (float16
autocast with a GradScaler: ``16-mixed``) or ``32``; ``--channels-last`` also tries the
channels_last memory format (timed beside the default format). Without a GPU the script says so
and exits with status 2, unless ``--device cpu`` asks for the same measurement on the CPU
(float32; there it compares crnn's fast CPU RNN path with ``rnn=none``).

    python scripts/bench_gpu.py                                   # GPU: none, conv, srnn, sws_birnn, ...
    python scripts/bench_gpu.py --device cpu --threads 1 --layers none,sws_birnn --steps 3 --rounds 7
"""

from __future__ import annotations

import argparse
import statistics
import sys

import torch
from bench_clock import CLOCKS, add_clock_argument

from crnn.builders import build_model, compose_config
from crnn.layers import list_layers
from crnn.runtime import keep_freed_memory

CLOCK = CLOCKS["wall"]  # main() sets --clock
BATCH, CLASSES, EPOCH_IMAGES = 128, 100, 50_000


def build(backbone: str, layer: str, device: torch.device, channels_last: bool):
    """The classifier ``crnn-train backbone=<backbone> rnn=<layer> head=linear`` builds, and its
    optimizer (the task's)."""
    task, model, _ = build_model(compose_config([f"backbone={backbone}", f"rnn={layer}", "head=linear"]))
    model = model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model, task.optimizer_factory(model.parameters())


class Trainer:
    """Optimizer steps of one model on a fixed random batch, in a given precision."""

    def __init__(
        self, model: torch.nn.Module, optimizer, device: torch.device, precision: str, channels_last: bool
    ):
        self.model, self.opt, self.device, self.precision = model.train(), optimizer, device, precision
        self.x = torch.randn(BATCH, 3, 32, 32, device=device)
        if channels_last:
            self.x = self.x.contiguous(memory_format=torch.channels_last)
        self.y = torch.randint(0, CLASSES, (BATCH,), device=device)
        self.scaler = torch.amp.GradScaler(device.type, enabled=precision == "16")

    def steps(self, n: int) -> float:
        """Seconds for ``n`` steps (synchronised; wall clock, or CPU time with ``--clock cpu``)."""
        dtype = {"bf16": torch.bfloat16, "16": torch.float16}.get(self.precision)
        start = CLOCK()
        for _ in range(n):
            self.opt.zero_grad(set_to_none=True)
            with torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None):
                loss = torch.nn.functional.cross_entropy(self.model(self.x), self.y)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.opt)
            self.scaler.update()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return CLOCK() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    parser.add_argument("--backbone", default="resnet20")
    parser.add_argument("--layers", default=None, help="comma list of rnn configs (default: none + registry)")
    parser.add_argument("--precision", choices=["bf16", "16", "32"], default=None, help="cuda: bf16; cpu: 32")
    parser.add_argument("--channels-last", action="store_true", help="also time the channels_last format")
    parser.add_argument("--steps", type=int, default=10, help="steps per model per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--epoch", action="store_true", help="also time one 50,000-image epoch per layer")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    add_clock_argument(parser)
    args = parser.parse_args(argv)
    keep_freed_memory()  # as crnn-train does
    global CLOCK
    CLOCK = CLOCKS[args.clock]

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("No CUDA GPU on this machine: nothing measured. (--device cpu runs the same steps on the CPU.)")
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    precision = args.precision or ("bf16" if device.type == "cuda" else "32")
    if device.type == "cuda" and precision == "bf16" and not torch.cuda.is_bf16_supported():
        print("this GPU has no bfloat16: use --precision 16")
        return 2
    layers = args.layers.split(",") if args.layers else ["none", *list_layers()]
    formats = [False, True] if args.channels_last else [False]
    name = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"cpu, {torch.get_num_threads()} threads"
    )
    print(f"### {args.backbone} training, batch {BATCH}, {name}, precision {precision}\n")

    trainers = {}
    for layer in layers:
        for channels_last in formats:
            torch.manual_seed(0)
            model, optimizer = build(args.backbone, layer, device, channels_last)
            trainers[(layer, channels_last)] = Trainer(model, optimizer, device, precision, channels_last)
    for trainer in trainers.values():
        trainer.steps(2)  # warm-up: cuDNN autotuning, allocator, oneDNN primitives
    times: dict[tuple[str, bool], list[float]] = {key: [] for key in trainers}
    for _ in range(args.rounds):  # interleaved, so that contention hits every model alike
        for key, trainer in trainers.items():
            times[key].append(trainer.steps(args.steps))
    rate = {key: BATCH * args.steps / statistics.median(t) for key, t in times.items()}

    base = rate.get(("none", False))
    print("| rnn | memory format | images/s | x rnn=none |")
    print("|---|---|---:|---:|")
    for (layer, channels_last), r in rate.items():
        ratio = f"{r / base:.3f}" if base else "-"
        print(f"| {layer} | {'channels_last' if channels_last else 'contiguous'} | {r:.0f} | {ratio} |")
    if args.epoch:
        steps = -(-EPOCH_IMAGES // BATCH)
        print(f"\none CIFAR-100 training epoch ({steps} steps of {BATCH}, random data on the device):")
        for (layer, channels_last), trainer in trainers.items():
            fmt = " (channels_last)" if channels_last else ""
            print(f"  {layer}{fmt}: {trainer.steps(steps):.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
