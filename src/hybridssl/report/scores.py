"""One picture of a comparison: each encoder's test accuracy per protocol, with the floors.

A dot plot, not bars: the accuracies of interest sit a few points apart well above zero, so the axis
starts near the lowest value, and bars drawn from a cut axis would exaggerate the gaps. The floors
(the same ViT at random init, raw pixels) are vertical lines in the colour of their protocol, so a
dot left of its protocol's raw-pixel line is an encoder that pixels beat.
"""

from __future__ import annotations

import io
import itertools
from collections.abc import Mapping, Sequence

from matplotlib.figure import Figure

Scores = Mapping[str, float | None]  # protocol name -> test top-1 %, None when not measured
FLOOR_STYLES = ("--", ":", "-.")


def probe_scores(rows: Sequence[Mapping]) -> dict[str, float | None]:
    """k-NN (the k closest to 20, the small-data default) and linear probe of one encoder's result rows
    (results.jsonl); the latest row counts when a protocol was measured twice."""
    def k_of(row: Mapping) -> int | None:
        return (row.get("settings") or {}).get("k")

    knn = [r for r in rows if r.get("protocol") == "knn"]
    linear = [r for r in rows if r.get("protocol") == "linear"]
    k = min((k_of(r) for r in knn if k_of(r) is not None), key=lambda k: (abs(k - 20), k), default=None)
    return {
        "k-NN" if k is None else f"k-NN (k={k})": next((r.get("value") for r in reversed(knn) if k_of(r) == k), None),
        "linear": linear[-1].get("value") if linear else None,
    }


def scores_png(encoders: Sequence[tuple[str, Scores]], floors: Sequence[tuple[str, Scores]] = (), title: str = "") -> bytes | None:
    """The figure as PNG bytes; None when nothing was measured."""
    fig = scores_figure(encoders, floors, title)
    if fig is None:
        return None
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight")
    return buffer.getvalue()


def scores_figure(encoders: Sequence[tuple[str, Scores]], floors: Sequence[tuple[str, Scores]] = (), title: str = "") -> Figure | None:
    """Encoders top to bottom in the given order (row i at y = i); None when nothing was measured."""
    protocols = list(dict.fromkeys(p for _, scores in [*encoders, *floors] for p, v in scores.items() if v is not None))
    values = [v for _, scores in [*encoders, *floors] for v in scores.values() if v is not None]
    if not protocols or not encoders:
        return None
    colours = {p: f"C{i}" for i, p in enumerate(protocols)}
    fig = Figure(figsize=(7.0, 1.4 + 0.42 * len(encoders)), dpi=110)
    ax = fig.add_subplot()
    offset = {p: (i - (len(protocols) - 1) / 2) * 0.18 for i, p in enumerate(protocols)}
    for row, (_, scores) in enumerate(encoders):
        for p, v in scores.items():
            if v is not None:
                ax.plot(v, row + offset[p], "o", color=colours[p], markersize=6)
                ax.annotate(f"{v:.1f}", (v, row + offset[p]), xytext=(5, -3), textcoords="offset points", fontsize=7)
    for (name, scores), style in zip(floors, itertools.cycle(FLOOR_STYLES)):
        for p, v in scores.items():
            if v is not None:
                ax.axvline(v, color=colours[p], linestyle=style, linewidth=1.1, label=f"{name}: {p}")
    for p in protocols:
        ax.plot([], [], "o", color=colours[p], label=p)
    ax.set_yticks(range(len(encoders)), [name for name, _ in encoders], fontsize=8)
    ax.set_ylim(len(encoders) - 0.5, -0.5)
    span = max(values) - min(values)
    ax.set_xlim(min(values) - max(1.0, 0.05 * span), max(values) + max(2.0, 0.12 * span))
    ax.set_xlabel("test top-1 (%)", fontsize=8)
    ax.tick_params(axis="x", labelsize=7)
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig
