#!/usr/bin/env python
"""Throughput of every crnn layer (a benchmark, not a test).

For each layer and shape: forward+backward time (median over ``--repeats`` runs after warm-up),
achieved GFLOP/s under the rule ``2 x MACs x 3`` (a MAC is 2 FLOPs; backward costs about twice
the forward, so fwd+bwd ~ 3 x forward), with the layer's exact MACs from ``crnn.complexity``; that
as a fraction of this machine's fp32 matmul peak (a large square ``torch.mm``, measured in the same
run); and the time relative to a ResNet basic block (two 3x3 convs with BN/ReLU, same channels).

Shapes: ``cifar`` = CIFAR last stage (B=128, C=64, 8x8), ``det`` = detection head (B=16, C=64, 40x40).
On CUDA, TF32 is switched off so that every number is true fp32.

    python scripts/bench_layers.py                      # every layer, both shapes, cpu (+ cuda)
    python scripts/bench_layers.py --shapes cifar --layers sws_birnn,conv --repeats 20 --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from crnn.complexity import count_macs
from crnn.layers import LAYERS, build_layer

SHAPES = {"cifar": (128, 64, 8, 8), "det": (16, 64, 40, 40)}
VANILLA_ONLY = {"ds_rnn", "rnn2d", "rnn2d_4way"}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


CLOCK = time.perf_counter  # --clock cpu: time.process_time (CPU seconds of this process)


def timed(fn: Callable[[], object], device: torch.device, repeats: int, warmup: int) -> float:
    """Median time of ``fn`` in seconds (wall clock unless ``--clock cpu``)."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        start = CLOCK()
        fn()
        sync(device)
        times.append(CLOCK() - start)
    return statistics.median(times)


def matmul_peak(device: torch.device, repeats: int) -> float:
    """fp32 GFLOP/s of a large square matmul."""
    n = 8192 if device.type == "cuda" else 2048
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    t = timed(lambda: torch.mm(a, b), device, max(3, repeats // 2), warmup=2)
    return 2 * n**3 / t / 1e9


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN + identity, ReLU: the conv block an RNN layer is compared to."""

    def __init__(self, c: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(c, c, 3, padding=1, bias=False),
            nn.BatchNorm2d(c),
            nn.ReLU(inplace=True),
            nn.Conv2d(c, c, 3, padding=1, bias=False),
            nn.BatchNorm2d(c),
        )

    def forward(self, x):
        return torch.relu(self.body(x) + x)


def fwd_bwd_time(module: nn.Module, x: torch.Tensor, repeats: int, warmup: int) -> float:
    module.train()
    params = list(module.parameters())
    x = x.detach().requires_grad_(True)  # a layer inside a network also back-propagates to its input
    grad = torch.randn_like(module(x))

    def step():
        for p in params:
            p.grad = None
        x.grad = None
        module(x).backward(grad)

    return timed(step, x.device, repeats, warmup)


def bench(device: torch.device, shapes: list[str], layers: list[str], cell: str, repeats: int, warmup: int):
    peak = matmul_peak(device, repeats)
    rows = []
    for shape in shapes:
        B, C, H, W = SHAPES[shape]
        torch.manual_seed(0)
        x = torch.randn(B, C, H, W, device=device)
        block = BasicBlock(C).to(device)
        block_macs = count_macs(block, x)
        block_t = fwd_bwd_time(block, x, repeats, warmup)
        rows.append(("conv block (2x conv3x3)", "-", shape, block_macs, block_t, block_t))
        for name in layers:
            kwargs = {}
            if name not in ("conv", "dsconv"):
                kwargs["cell"] = cell if name not in VANILLA_ONLY or cell.startswith("rnn_") else "rnn_tanh"
            layer = build_layer(name, C, C, **kwargs).to(device)
            macs = count_macs(layer, x)
            assert macs == B * layer.closed_form_macs(H, W), name
            t = fwd_bwd_time(layer, x, repeats, warmup)
            rows.append((name, kwargs.get("cell", "-"), shape, macs, t, block_t))
    return peak, rows


def print_table(device: torch.device, threads: int, clock: str, peak: float, rows) -> None:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu, {threads} threads"
    print(f"\n### {device.type} ({name}, {clock} clock); fp32 matmul peak {peak:.1f} GFLOP/s\n")
    print("GFLOP/s = 2 x exact MACs x 3 (fwd+bwd) / time\n")
    header = (
        "layer | cell | shape (B,C,H,W) | MACs fwd (M) | fwd+bwd ms | GFLOP/s | % of mm peak | x conv block"
    )
    print(f"| {header} |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for layer, cell, shape, macs, t, block_t in rows:
        gflops = 2 * macs * 3 / t / 1e9
        dims = ",".join(map(str, SHAPES[shape]))
        print(
            f"| {layer} | {cell} | {shape} ({dims}) | {macs / 1e6:.1f} | {t * 1e3:.2f} | {gflops:.1f} "
            f"| {100 * gflops / peak:.0f}% | {t / block_t:.2f} |"
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="auto", help="cpu, cuda, or auto (cpu, plus cuda if available)")
    parser.add_argument("--shapes", default="cifar,det", help=f"comma list of {', '.join(SHAPES)}")
    parser.add_argument("--layers", default=",".join(sorted(LAYERS)), help="comma list of layer names")
    parser.add_argument("--cell", default="rnn_tanh", help="cell of the recurrent layers")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="wall: perf_counter (the number to report); cpu: process CPU time, steadier on a shared "
        "machine with --threads 1 (CPU only)",
    )
    args = parser.parse_args(argv)

    global CLOCK
    if args.clock == "cpu":
        CLOCK = time.process_time

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    if args.device == "auto":
        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    else:
        devices = args.device.split(",")
    shapes = args.shapes.split(",")
    layers = args.layers.split(",")
    for bad in [s for s in shapes if s not in SHAPES] + [n for n in layers if n not in LAYERS]:
        parser.error(f"unknown shape or layer {bad!r}")
    for dev in devices:
        device = torch.device(dev)
        peak, rows = bench(device, shapes, layers, args.cell, args.repeats, args.warmup)
        print_table(device, torch.get_num_threads(), args.clock, peak, rows)


if __name__ == "__main__":
    main()
