"""Effective receptive field (ERF, Luo et al. 2016) of a layer or of a composed model's backbone.

Method: the module runs in eval mode, in float64, on ``samples`` random N(0, 1) inputs (one batch;
eval-mode layers treat samples independently). The gradient of the **centre output position**
(all channels summed: ``y[:, :, h // 2, w // 2].sum()``) with respect to the input is taken; its
absolute value, summed over input channels and averaged over the samples, is the ERF map
``(H, W)`` in input pixels. For a composed model the output is the backbone's feature map (e.g.
8x8 for a CIFAR ResNet on 32x32 input) and its centre position ``(h // 2, w // 2)``.

Numbers reported for a map (see :class:`ReceptiveField`):

* ``radius95``: the smallest radius ``r`` (Chebyshev distance, in input pixels, from the input
  point under the output centre: ``(h // 2) * H / h``, the convention of padded strided convs
  where output ``i`` is centred on input ``i * stride``) such that the pixels within ``r`` hold
  at least 95% of the gradient mass; ``radius95_euclid`` the same with Euclidean distance;
* ``support``: height x width of the bounding box of the pixels with a non-zero gradient
  (``> support_tol * max``; exactly zero by default: float64 makes structural zeros exact), and
  ``coverage``, the fraction of input pixels with a non-zero gradient.

So a 3x3 conv has support 3x3 and radius 1, and a layer with a global receptive field (SWS-BiRNN)
has coverage 1.0.
"""

from __future__ import annotations

import copy
import json
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from crnn.checkpoints import CheckpointError
from crnn.errors import USER_ERRORS

__all__ = ["ReceptiveField", "erf", "layer_erf", "model_erf", "parse_layer_spec", "save_heatmaps"]


@dataclass
class ReceptiveField:
    name: str
    grad: np.ndarray = field(repr=False)  # (H, W) mean |d centre output / d input|
    input_size: tuple[int, int]
    output_size: tuple[int, int]
    centre_out: tuple[int, int]
    centre_in: tuple[float, float]
    radius95: float
    radius95_euclid: float
    support: tuple[int, int]
    coverage: float
    mass: float = 0.95

    def summary(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("grad")
        return out


def _feature(y: Any) -> torch.Tensor:
    if isinstance(y, torch.Tensor):
        return y
    if isinstance(y, Mapping):
        return _feature(next(iter(y.values())))  # e.g. FPN: the first (finest) level
    if isinstance(y, (list, tuple)):
        return _feature(y[0])
    raise TypeError(f"cannot take a feature map from {type(y).__name__}")


def radius_for_mass(
    grad: np.ndarray, centre: tuple[float, float], mass: float = 0.95, metric: str = "chebyshev"
) -> float:
    """Smallest radius around ``centre`` whose pixels hold ``mass`` of ``grad``'s total."""
    total = float(grad.sum())
    if total <= 0:
        return float("nan")
    ys, xs = np.indices(grad.shape)
    dy, dx = np.abs(ys - centre[0]), np.abs(xs - centre[1])
    dist = np.maximum(dy, dx) if metric == "chebyshev" else np.sqrt(dy**2 + dx**2)
    order = np.argsort(dist, axis=None, kind="stable")
    d_sorted, g_sorted = dist.ravel()[order], grad.ravel()[order]
    # cumulative mass over whole distance shells (pixels at equal distance enter together)
    shells, first = np.unique(d_sorted, return_index=True)
    cum = np.cumsum(g_sorted)
    ends = np.append(first[1:], len(d_sorted)) - 1
    shell_mass = cum[ends] / total
    idx = int(np.searchsorted(shell_mass, mass - 1e-12))
    return float(shells[min(idx, len(shells) - 1)])


def erf(
    module: nn.Module,
    input_shape: Sequence[int],
    name: str = "",
    samples: int = 8,
    seed: int = 0,
    support_tol: float = 0.0,
    mass: float = 0.95,
) -> ReceptiveField:
    """The ERF of ``module`` (any ``(B, C, H, W) -> (B, C', h, w)`` map) at its output centre."""
    model = copy.deepcopy(module).double().eval()
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(samples, *input_shape, generator=gen, dtype=torch.float64, requires_grad=True)
    y = _feature(model(x))
    if y.dim() != 4:
        raise ValueError(
            f"{name or type(module).__name__}: expected a (B, C, h, w) output, got shape {tuple(y.shape)}"
        )
    h, w = y.shape[-2:]
    ci, cj = h // 2, w // 2
    y[:, :, ci, cj].sum().backward()
    grad = x.grad.abs().sum(dim=1).mean(dim=0).numpy()
    H, W = grad.shape
    centre_in = (ci * H / h, cj * W / w)  # padded strided convs: output i is centred on input i * stride
    nonzero = grad > support_tol * grad.max() if grad.max() > 0 else np.zeros_like(grad, dtype=bool)
    rows, cols = np.nonzero(nonzero.any(axis=1))[0], np.nonzero(nonzero.any(axis=0))[0]
    support = (int(rows[-1] - rows[0] + 1), int(cols[-1] - cols[0] + 1)) if len(rows) else (0, 0)
    return ReceptiveField(
        name=name or type(module).__name__,
        grad=grad,
        input_size=(H, W),
        output_size=(int(h), int(w)),
        centre_out=(int(ci), int(cj)),
        centre_in=(float(centre_in[0]), float(centre_in[1])),
        radius95=radius_for_mass(grad, centre_in, mass, "chebyshev"),
        radius95_euclid=radius_for_mass(grad, centre_in, mass, "euclid"),
        support=support,
        coverage=float(nonzero.mean()),
        mass=mass,
    )


_ALIASES = {"conv3x3": ("conv", {"kernel_size": 3})}


def parse_layer_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """``"srnn"``, ``"conv:kernel_size=9"``, ``"sws_birnn:cell=gru,hidden_channels=8"``, ``"conv3x3"``
    -> ``(name, kwargs)`` (values parsed as YAML scalars)."""
    import yaml

    name, _, rest = spec.partition(":")
    m = re.fullmatch(r"(conv|dsconv)(\d+)x\2", name)
    if m:
        name, kwargs = m.group(1), {"kernel_size": int(m.group(2))}
    else:
        name, kwargs = _ALIASES.get(name, (name, {}))
        kwargs = dict(kwargs)
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        kwargs[key.strip()] = yaml.safe_load(value)
    return name, kwargs


def layer_erf(spec: str, channels: int = 16, size: int = 16, **kwargs: Any) -> ReceptiveField:
    """ERF of one layer ``build_layer(name, channels, channels, **spec kwargs)`` on ``size x size``."""
    from crnn.layers import build_layer

    name, layer_kwargs = parse_layer_spec(spec)
    torch.manual_seed(kwargs.pop("init_seed", 0))
    layer = build_layer(name, channels, channels, **layer_kwargs)
    label = name + "".join(f" {k}={v}" for k, v in layer_kwargs.items())
    return erf(layer, (channels, size, size), name=label, **kwargs)


def model_erf(overrides: Sequence[str], **kwargs: Any) -> ReceptiveField:
    """ERF of the backbone of the model ``crnn-train <overrides>`` builds (random init), at the
    centre of its feature map, on the task's input size."""
    from crnn.builders import build_model, compose_config

    cfg = compose_config(list(overrides))
    task, _, _ = build_model(cfg)
    net = task.net
    backbone = getattr(net, "backbone", net)
    label = " ".join(overrides) or "default model"
    return erf(backbone, tuple(task.input_shape), name=label, **kwargs)


def checkpoint_erf(ckpt_path: str | Path, trust: bool = False, **kwargs: Any) -> ReceptiveField:
    """ERF of the backbone of a trained checkpoint (:func:`crnn.builders.task_from_checkpoint`: safe
    loading unless ``trust``), at the centre of its feature map, on the task's input size."""
    from crnn.builders import task_from_checkpoint

    loaded = task_from_checkpoint(ckpt_path, trust=trust)
    backbone = getattr(loaded.task.net, "backbone", loaded.task.net)
    label = f"{loaded.run_dir.name}/{loaded.path.stem}"
    return erf(backbone, tuple(loaded.task.input_shape), name=label, **kwargs)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", text).strip("_")[:80] or "model"


def save_heatmaps(fields: Sequence[ReceptiveField], out_dir: str | Path) -> dict[str, Path]:
    """One PNG per map (``erf_<name>.png``: linear and log-scale heatmaps with the centre and the
    95% square) and, for several maps, ``erf_comparison.png`` (log scale, side by side)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm
    from matplotlib.patches import Rectangle

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    def draw(ax, rf: ReceptiveField, log: bool) -> None:
        g = rf.grad / rf.grad.max() if rf.grad.max() > 0 else rf.grad
        if log:
            positive = g[g > 0]
            vmin = max(float(positive.min()) if positive.size else 1e-12, 1e-12)
            im = ax.imshow(np.where(g > 0, g, np.nan), cmap="magma", norm=LogNorm(vmin=vmin, vmax=1.0))
        else:
            im = ax.imshow(g, cmap="magma", vmin=0, vmax=1)
        ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
        cy, cx = rf.centre_in
        ax.plot([cx], [cy], marker="+", color="cyan", ms=10, mew=1.5)
        r = rf.radius95
        if np.isfinite(r):
            ax.add_patch(
                Rectangle(
                    (cx - r - 0.5, cy - r - 0.5), 2 * r + 1, 2 * r + 1, fill=False, ec="cyan", lw=1, ls="--"
                )
            )
        ax.set_xticks([])
        ax.set_yticks([])

    files: dict[str, Path] = {}
    for rf in fields:
        fig, axes = plt.subplots(1, 2, figsize=(9, 4.2))
        draw(axes[0], rf, log=False)
        axes[0].set_title("|grad| (linear, max = 1)", fontsize=9)
        draw(axes[1], rf, log=True)
        axes[1].set_title("|grad| (log scale; white = exactly 0)", fontsize=9)
        fig.suptitle(
            f"{rf.name}: r95 = {rf.radius95:g} px, support {rf.support[0]}x{rf.support[1]}, "
            f"coverage {rf.coverage:.0%} of {rf.input_size[0]}x{rf.input_size[1]}",
            fontsize=10,
        )
        fig.tight_layout()
        path = out / f"erf_{_slug(rf.name)}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        files[rf.name] = path
    if len(fields) > 1:
        fig, axes = plt.subplots(1, len(fields), figsize=(3.6 * len(fields), 3.6))
        for ax, rf in zip(axes, fields, strict=True):
            draw(ax, rf, log=True)
            ax.set_title(f"{rf.name}\nr95={rf.radius95:g}, cover {rf.coverage:.0%}", fontsize=9)
        fig.tight_layout()
        path = out / "erf_comparison.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        files["comparison"] = path
    (out / "receptive_field.json").write_text(json.dumps([rf.summary() for rf in fields], indent=2) + "\n")
    files["json"] = out / "receptive_field.json"
    return files


def _fields(args: Any) -> list[ReceptiveField]:
    fields: list[ReceptiveField] = []
    for spec in args.layer:
        fields.append(layer_erf(spec, args.channels, args.size, samples=args.samples, mass=args.mass))
    for ckpt in args.ckpt:
        fields.append(checkpoint_erf(ckpt, args.trust_checkpoint, samples=args.samples, mass=args.mass))
    if args.sweep:
        key, _, values = args.sweep.partition("=")
        for value in values.split(","):
            fields.append(
                model_erf([*args.overrides, f"{key}={value}"], samples=args.samples, mass=args.mass)
            )
    elif args.overrides or not (args.layer or args.ckpt):
        fields.append(model_erf(args.overrides, samples=args.samples, mass=args.mass))
    return fields


def main(argv: Sequence[str] | None = None) -> None:
    import argparse
    import time

    parser = argparse.ArgumentParser(
        prog="receptive_field.py",
        description="Effective receptive field (|d centre output / d input|) of layers or composed models.",
        epilog="examples:\n"
        "  scripts/receptive_field.py --layer conv3x3 --layer srnn --layer sws_birnn --size 16\n"
        "  scripts/receptive_field.py --layer conv:kernel_size=9 --size 8\n"
        "  scripts/receptive_field.py backbone=resnet20 rnn=srnn\n"
        "  scripts/receptive_field.py backbone=resnet20 --sweep rnn=none,srnn,sws_birnn\n"
        "  scripts/receptive_field.py --ckpt outputs/runs/<run>/checkpoints/best.ckpt",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "overrides", nargs="*", help="Hydra overrides of a composed model (as for crnn-train)"
    )
    parser.add_argument(
        "--layer",
        action="append",
        default=[],
        help="a single layer: NAME[:key=value,...] or convKxK (repeatable)",
    )
    parser.add_argument("--ckpt", action="append", default=[], help="a trained checkpoint (repeatable)")
    parser.add_argument(
        "--trust-checkpoint", action="store_true", help="load checkpoints that may run code (your own files)"
    )
    parser.add_argument("--sweep", help="KEY=V1,V2,...: one composed model per value (with the overrides)")
    parser.add_argument("--channels", type=int, default=16, help="channels of a single layer (in = out)")
    parser.add_argument("--size", type=int, default=16, help="input height = width of a single layer")
    parser.add_argument("--samples", type=int, default=8, help="random inputs averaged")
    parser.add_argument("--mass", type=float, default=0.95, help="gradient mass of the reported radius")
    parser.add_argument("--out", help="output folder (default outputs/receptive_field/<time>)")
    args = parser.parse_args(argv)

    try:
        fields = _fields(args)
    except (*USER_ERRORS, CheckpointError) as err:
        print(f"receptive_field: {err}", file=sys.stderr)
        raise SystemExit(2) from None

    from crnn.runtime import project_root

    out = (
        Path(args.out)
        if args.out
        else project_root() / "outputs" / "receptive_field" / time.strftime("%Y-%m-%d_%H-%M-%S")
    )
    files = save_heatmaps(fields, out)
    width = max(len(rf.name) for rf in fields)
    pct = int(round(args.mass * 100))
    print(f"{'model / layer':<{width}}  input  output  r{pct} (cheb)  r{pct} (eucl)  support  coverage  PNG")
    for rf in fields:
        size_in = f"{rf.input_size[0]}x{rf.input_size[1]}"
        size_out = f"{rf.output_size[0]}x{rf.output_size[1]}"
        support = f"{rf.support[0]}x{rf.support[1]}"
        print(
            f"{rf.name:<{width}}  {size_in:<6} {size_out:<6}  {rf.radius95:>10g}  {rf.radius95_euclid:>10.2f}"
            f"  {support:<7}  {rf.coverage:>8.1%}  {files[rf.name]}"
        )
    if "comparison" in files:
        print(f"comparison: {files['comparison']}")
    print(f"numbers: {files['json']}")
