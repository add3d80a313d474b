#!/usr/bin/env python
"""Throughput of every crnn layer (a benchmark, not a test).

For each layer and shape: forward+backward time (median over ``--repeats`` rounds; every round
runs each candidate of the shape once, interleaved, so that contention on a shared machine hits all
alike), achieved GFLOP/s under the rule ``2 x MACs x 3`` (a MAC is 2 FLOPs; backward costs about
twice the forward, so fwd+bwd ~ 3 x forward), with the layer's exact MACs from
``crnn.complexity``; that as a fraction of this process's fp32 matmul peak; and the time relative
to the conv block each layer replaces (a ResNet basic block: two 3x3 convs with BN/ReLU, same
channels). Layers whose vanilla-cell passes have the fast CPU path (``layer_info(name).fast_path``)
are timed on every path: ``fast (compiled)`` and ``fast (torch)`` (crnn.layers.fast_rnn with its
compiled pass, where it builds, and with its torch-op pass) and ``nn.RNN``.

Peak: the fastest of a large square fp32 matmul through MKL (``torch.mm``) and through oneDNN
(``torch.ops.mkldnn._linear_pointwise`` on dense tensors, and ``mkldnn_linear`` on oneDNN
tensors), measured in the same run; the winner is named.

Layers: the registry's (``crnn.layers.list_layers(cell=...)``: those taking ``--cell``, plus the
conv layers). Shapes: ``cifar`` = CIFAR last stage (B=128, C=64, 8x8), ``det`` = detection head
(B=16, C=64, 40x40). On CUDA, TF32 is switched off so that every number is true fp32.

    python scripts/bench_layers.py                      # every layer, both shapes, cpu (+ cuda)
    python scripts/bench_layers.py --shapes cifar --layers sws_birnn,conv --repeats 20 --threads 2
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable

import torch
from bench_clock import CLOCKS, add_clock_argument
from torch import nn

from crnn.complexity import count_macs
from crnn.layers import build_layer, compiled_kernel, layer_info, list_layers, rnn_kernel, rnn_path
from crnn.runtime import keep_freed_memory

SHAPES = {"cifar": (128, 64, 8, 8), "det": (16, 64, 40, 40)}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


CLOCK = CLOCKS["wall"]  # main() sets --clock


def interleaved(fns: dict[str, Callable[[], object]], device: torch.device, repeats: int, warmup: int):
    """Median time of each function, in rounds that run every function once."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    sync(device)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = CLOCK()
            fn()
            sync(device)
            times[name].append(CLOCK() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def matmul_peak(device: torch.device, repeats: int) -> tuple[float, str, dict[str, float]]:
    """``(GFLOP/s, name, all candidates)`` of the fastest large square fp32 matmul this process runs."""
    n = 8192 if device.type == "cuda" else 2048
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    candidates: dict[str, Callable[[], object]] = {
        "torch.mm (MKL)" if device.type == "cpu" else "torch.mm": lambda: torch.mm(a, b)
    }
    if device.type == "cpu" and torch.backends.mkldnn.is_available():
        bt = b.t().contiguous()  # linear computes a @ w^T
        candidates["oneDNN _linear_pointwise"] = lambda: torch.ops.mkldnn._linear_pointwise(
            a, bt, None, "none", [], ""
        )
        am, btm = a.to_mkldnn(), bt.to_mkldnn()
        candidates["oneDNN mkldnn_linear"] = lambda: torch._C._nn.mkldnn_linear(am, btm, None)
    times = interleaved(candidates, device, max(3, repeats // 2), warmup=2)
    gflops = {name: 2 * n**3 / t / 1e9 for name, t in times.items()}
    best = max(gflops, key=gflops.get)
    return gflops[best], best, gflops


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


def fwd_bwd_step(module: nn.Module, x: torch.Tensor, path: str, kernel: str = "auto") -> Callable[[], None]:
    """One training step of ``module`` on ``x`` (input gradient included: a layer inside a network
    back-propagates to its input) with the RNN path ``path`` and the fast path's kernel ``kernel``."""
    module.train()
    params = list(module.parameters())
    x = x.detach().requires_grad_(True)
    with rnn_path(path), rnn_kernel(kernel):
        grad = torch.randn_like(module(x))

    def step():
        for p in params:
            p.grad = None
        x.grad = None
        with rnn_path(path), rnn_kernel(kernel):
            module(x).backward(grad)

    return step


def bench(device: torch.device, shapes: list[str], layers: list[str], cell: str, repeats: int, warmup: int):
    peak = matmul_peak(device, repeats)
    rows = []
    for shape in shapes:
        B, C, H, W = SHAPES[shape]
        torch.manual_seed(0)
        x = torch.randn(B, C, H, W, device=device)
        block = BasicBlock(C).to(device)
        candidates = {
            ("conv block (2x conv3x3)", "-", "-"): (count_macs(block, x), fwd_bwd_step(block, x, "auto"))
        }
        for name in layers:
            info = layer_info(name)
            kwargs = {"cell": cell} if info.cells else {}
            layer = build_layer(name, C, C, **kwargs).to(device)
            macs = count_macs(layer, x)
            assert macs == B * layer.closed_form_macs(H, W), name
            fast = info.fast_path and cell in ("rnn_tanh", "rnn_relu") and device.type == "cpu"
            own = "python loop" if info.python_loop else "nn.RNN" if info.cells else "-"
            runs = [("auto", "auto", own)]
            if fast:
                runs = [("fast", "torch", "fast (torch)"), ("native", "auto", "nn.RNN")]
                if compiled_kernel()[0] is not None:
                    runs.insert(0, ("fast", "compiled", "fast (compiled)"))
            for path, kernel, label in runs:
                step = fwd_bwd_step(layer, x, path, kernel)
                candidates[(name, kwargs.get("cell", "-"), label)] = (macs, step)
        times = interleaved({key: step for key, (_, step) in candidates.items()}, device, repeats, warmup)
        block_t = times[next(iter(candidates))]
        for key, (macs, _) in candidates.items():
            rows.append((*key, shape, macs, times[key], block_t))
    return peak, rows


def print_table(device: torch.device, threads: int, clock: str, peak, rows) -> None:
    peak_gflops, peak_name, all_peaks = peak
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu, {threads} threads"
    print(f"\n### {device.type} ({name}, {clock} clock)\n")
    print(f"fp32 matmul peak {peak_gflops:.1f} GFLOP/s ({peak_name})")
    print("matmul candidates (2048^2, GFLOP/s): " + ", ".join(f"{k} {v:.1f}" for k, v in all_peaks.items()))
    print("GFLOP/s = 2 x exact MACs x 3 (fwd+bwd) / time; medians of interleaved rounds\n")
    header = "layer | cell | path | shape | MACs fwd (M) | fwd+bwd ms | GFLOP/s | % of peak | x conv block"
    print(f"| {header} |")
    print("|---|---|---|---|---:|---:|---:|---:|---:|")
    for layer, cell, path, shape, macs, t, block_t in rows:
        gflops = 2 * macs * 3 / t / 1e9
        dims = ",".join(map(str, SHAPES[shape]))
        print(
            f"| {layer} | {cell} | {path} | {shape} ({dims}) | {macs / 1e6:.1f} | {t * 1e3:.2f} "
            f"| {gflops:.1f} | {100 * gflops / peak_gflops:.0f}% | {t / block_t:.2f} |"
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="auto", help="cpu, cuda, or auto (cpu, plus cuda if available)")
    parser.add_argument("--shapes", default="cifar,det", help=f"comma list of {', '.join(SHAPES)}")
    parser.add_argument("--layers", default=None, help="comma list of layer names (default: the registry's)")
    parser.add_argument("--cell", default="rnn_tanh", help="cell of the recurrent layers")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    add_clock_argument(parser)
    args = parser.parse_args(argv)
    keep_freed_memory()  # as crnn-train does
    global CLOCK
    CLOCK = CLOCKS[args.clock]

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    if args.device == "auto":
        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    else:
        devices = args.device.split(",")
    shapes = args.shapes.split(",")
    known = list_layers(cell=args.cell)
    layers = args.layers.split(",") if args.layers else known
    for bad in [s for s in shapes if s not in SHAPES] + [n for n in layers if n not in known]:
        parser.error(f"unknown shape, or layer not taking cell={args.cell!r}: {bad!r}")
    for dev in devices:
        device = torch.device(dev)
        peak, rows = bench(device, shapes, layers, args.cell, args.repeats, args.warmup)
        print_table(device, torch.get_num_threads(), args.clock, peak, rows)


if __name__ == "__main__":
    main()
