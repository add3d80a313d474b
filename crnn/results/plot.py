"""Accuracy-vs-cost plots: one marker per layer type (from the layer registry), one colour per
backbone, error bars = std over seeds, the Pareto front drawn."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["pareto_front", "plot"]


def pareto_front(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """Points not dominated by another (lower or equal cost ``x`` and higher metric ``y``), by ``x``."""
    front: list[tuple[float, float]] = []
    for x, y in sorted(points, key=lambda p: (p[0], -p[1])):
        if not front or y > front[-1][1]:
            front.append((x, y))
    return front


def _marker(layer: Any) -> str:
    from crnn.layers import layer_info

    try:
        return layer_info(str(layer)).marker
    except ValueError:
        return "o"


def plot(
    rows: Sequence[dict[str, Any]],
    varying: Sequence[str],
    metric: str,
    scale: float,
    x_key: str,
    path: Path,
    title: str = "",
) -> Path | None:
    """Metric vs ``x_key`` (``macs`` or ``params``) of the rows with both; ``None`` if there are none."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    from crnn.results.aggregate import layer_order

    pts = [r for r in rows if r["mean"] is not None and r[x_key] is not None]
    if not pts:
        return None
    backbones = list(dict.fromkeys(r["backbone"] for r in pts))
    colours = {b: plt.cm.tab10(i % 10) for i, b in enumerate(backbones)}
    fig, ax = plt.subplots(figsize=(7, 4.8))
    for r in pts:
        x, y = r[x_key] / 1e6, r["mean"] * scale
        marker = _marker(r["rnn"])
        ax.errorbar(
            x,
            y,
            yerr=(r["std"] or 0) * scale,
            fmt=marker,
            color=colours[r["backbone"]],
            ms=9 if marker == "*" else 7,
            capsize=3,
            mec="black",
            mew=0.5,
            zorder=3,
        )
        extra = ", ".join(
            f"{k.split('.')[-1]}={r['settings'].get(k)}" for k in varying if r["settings"].get(k) is not None
        )
        if extra and len(pts) <= 40:
            ax.annotate(extra, (x, y), textcoords="offset points", xytext=(5, 4), fontsize=7, color="0.3")
    front = pareto_front([(r[x_key] / 1e6, r["mean"] * scale) for r in pts])
    style = {"ls": "--", "color": "0.4", "lw": 1, "zorder": 2, "label": "Pareto front"}
    if len(front) > 1:
        ax.step([p[0] for p in front], [p[1] for p in front], where="post", **style)
    else:
        ax.plot(*front[0], ls="none", marker="o", mfc="none", mec="0.4", ms=14, label="Pareto front")
    handles = [
        Line2D([], [], ls="none", marker=_marker(layer), color="0.5", mec="black", ms=8, label=layer)
        for layer in sorted({r["rnn"] for r in pts}, key=layer_order)
    ]
    if len(backbones) > 1:
        handles += [Line2D([], [], ls="none", marker="s", color=colours[b], ms=8, label=b) for b in backbones]
    handles += [h for h in ax.get_legend_handles_labels()[0] if h.get_label() == "Pareto front"]
    ax.legend(handles=handles, fontsize=8, loc="best", framealpha=0.85)
    ax.set_xlabel({"macs": "MACs (M)", "params": "parameters (M)"}[x_key])
    ax.set_ylabel(f"{metric}" + (" (%)" if scale == 100 else "") + " (mean ± std over seeds)")
    ax.set_title(title or f"{metric} vs {'MACs' if x_key == 'macs' else 'parameters'} (best checkpoint)")
    xs = [r[x_key] for r in pts]
    if min(xs) > 0 and max(xs) / min(xs) > 30:
        ax.set_xscale("log")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path
