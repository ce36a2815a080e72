"""2-D map of frozen test features coloured by class: t-SNE (scikit-learn), or UMAP when installed.

A seeded, class-stratified subsample keeps t-SNE to seconds on a CPU (its cost grows with N log N to
N^2). The map shows whether classes form clusters, MAE-CT's visual evidence next to the numbers.
"""

from __future__ import annotations

import io

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import Tensor


def embed_2d(features: Tensor, seed: int = 0, prefer_umap: bool = True) -> tuple[np.ndarray, str]:
    """N x D features -> N x 2 coordinates and the name of the method that made them."""
    x = torch.nn.functional.normalize(features.float(), dim=1).numpy()
    if prefer_umap:
        try:
            import umap  # type: ignore[import-not-found]

            return umap.UMAP(n_components=2, random_state=seed, metric="euclidean").fit_transform(x), "UMAP"
        except ImportError:
            pass
    from sklearn.manifold import TSNE

    from hybridssl.evaluation.cpu import sklearn_threads

    perplexity = float(min(30.0, max(2.0, (len(x) - 1) / 3)))
    with sklearn_threads():
        coords = TSNE(n_components=2, perplexity=perplexity, init="pca", learning_rate="auto", random_state=seed).fit_transform(x)
    return coords, f"t-SNE (perplexity {perplexity:g})"


def embedding_png(coords: np.ndarray, labels: np.ndarray, class_names: list[str] | None, title: str) -> bytes:
    fig = Figure(figsize=(6.2, 5.0), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    classes = np.unique(labels)
    cmap = "tab10" if len(classes) <= 10 else "tab20"
    for i, c in enumerate(classes):
        points = coords[labels == c]
        name = class_names[c] if class_names and c < len(class_names) else str(c)
        ax.scatter(points[:, 0], points[:, 1], s=6, alpha=0.75, color=_colour(cmap, i, len(classes)), label=name)
    if len(classes) <= 20:  # a legend names the classes; beyond 20 it would hide the map
        ax.legend(fontsize=7, markerscale=2, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def _colour(cmap: str, i: int, n: int):
    from matplotlib import colormaps

    return colormaps[cmap](i % colormaps[cmap].N)
