"""Nearest neighbours people can look at: for seeded query images, the k most similar images of each
set of embeddings as a grid of inline thumbnails, and each set's closest (near-duplicate) pairs.

Numbers such as a k-NN accuracy say how good an encoder is; the pictures say why: which classes it
confuses, whether it matches shapes or backgrounds, which images are duplicates. Several sets of the
same images in the same row order (an MAE start and the tuned encoder) show the same queries side by
side. `write_neighbour_page` writes one such page from `Embeddings`; `neighbour_grid` is the grid
alone, shared with the "nearest neighbours" section of `hybridssl report` (report/run_report.py).
Everything is inline (base64 PNGs, the style of report/html.py); every path and title is escaped.
"""

from __future__ import annotations

import functools
import io
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor

from hybridssl.embedding.encoder import Embeddings
from hybridssl.embedding.neighbours import near_duplicates, nearest
from hybridssl.errors import DataError
from hybridssl.files import atomic_write_text
from hybridssl.report import html as H

SUMMARY_QUERIES = 1000  # seeded queries behind the same-class share: a stable number, still seconds on a CPU
IN_MEMORY_DATASETS = ("fashion-mnist", "cifar10", "cifar100", "stl10")  # loaded whole; folder/shards: per row


# ----------------------------------------------------------------------------- selection


def select_queries(n: int, count: int, seed: int = 0) -> np.ndarray:
    """`count` distinct rows of `n`, seeded and independent of the vectors, so every set of the same
    images gets the same queries; a larger count starts with the rows of a smaller one."""
    return np.random.default_rng(seed).permutation(n)[: max(0, min(count, n))]


@dataclass
class Neighbours:
    """One set's k nearest rows of each query (itself excluded), most similar first."""

    title: str
    queries: np.ndarray  # Q rows
    indices: np.ndarray  # Q x k rows
    similarities: np.ndarray  # Q x k cosine similarities
    share: float | None = None  # same-class share of the neighbours of `summarised` queries; None without labels
    caption: str = ""
    summarised: int = 0


def find_neighbours(title: str, vectors: np.ndarray | Tensor, queries: np.ndarray, k: int) -> Neighbours:
    """The k nearest rows of `vectors` to each query row by cosine similarity, never the query itself."""
    bank = np.asarray(vectors, dtype=np.float32)
    sims, idx = nearest(bank[queries], bank, k, exclude=queries)
    return Neighbours(title, queries, idx, sims)


def seeded_neighbours(title: str, vectors: np.ndarray | Tensor, labels: np.ndarray, queries: int, k: int, seed: int,
                      caption: str = "") -> Neighbours:  # fmt: skip
    """The neighbours of `queries` seeded rows, with the same-class share over SUMMARY_QUERIES seeded rows
    (the shown ones first): a dozen queries is too few for a number worth comparing between sets."""
    summary_rows = select_queries(len(vectors), max(queries, SUMMARY_QUERIES), seed)
    found = find_neighbours(title, vectors, summary_rows, k)
    shown = min(queries, len(summary_rows))
    return Neighbours(title, summary_rows[:shown], found.indices[:shown], found.similarities[:shown],
                      same_class_share(labels, summary_rows, found.indices), caption, len(summary_rows))  # fmt: skip


def same_class_share(labels: np.ndarray, queries: np.ndarray, indices: np.ndarray) -> float | None:
    """The share of neighbours with their query's class, over labelled queries and neighbours: how
    often a k-NN vote would hear the right class. None when nothing is labelled."""
    q = labels[queries][:, None]
    n = labels[indices]
    known = (q >= 0) & (n >= 0)
    return float((n == q)[known].mean()) if known.any() else None


def check_rows_agree(sets: Sequence[tuple[str, Embeddings]]) -> None:
    """Side by side only makes sense for the same images in the same order: raise a DataError naming
    the first set and row that differ from the first set."""
    if not sets:
        raise DataError("neighbours: no embeddings given")
    first_title, first = sets[0]
    for title, emb in sets:
        if len(emb.vectors) != len(emb.paths):
            raise DataError(f"neighbours: {title!r} has {len(emb.vectors)} vectors but {len(emb.paths)} paths")
    if len(first.paths) < 2:
        raise DataError(f"neighbours: {first_title!r} has {len(first.paths)} row(s); neighbours need at least 2")
    for title, emb in sets[1:]:
        if len(emb.paths) != len(first.paths):
            raise DataError(f"neighbours: {title!r} has {len(emb.paths)} rows but {first_title!r} has {len(first.paths)}; "
                            "the sets must describe the same images in the same order (embed the same source)")  # fmt: skip
        differ = next((i for i, (a, b) in enumerate(zip(first.paths, emb.paths, strict=True)) if a != b), None)
        if differ is not None:
            raise DataError(f"neighbours: row {differ} is {emb.paths[differ]!r} in {title!r} but {first.paths[differ]!r} "
                            f"in {first_title!r}; the sets must describe the same images in the same order")  # fmt: skip


# ----------------------------------------------------------------------------- thumbnails


def png_bytes(image: Tensor | np.ndarray) -> bytes:
    """uint8 C x H x W (C = 1 or 3) -> PNG bytes."""
    from PIL import Image

    arr = np.asarray(image, dtype=np.uint8)
    arr = arr[0] if arr.shape[0] == 1 else arr.transpose(1, 2, 0)
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(arr)).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


@functools.cache
def placeholder_png() -> bytes:
    """A grey square with a cross: where an image could not be read."""
    arr = np.full((24, 24), 225, dtype=np.uint8)
    diagonal = np.arange(24)
    arr[diagonal, diagonal] = arr[diagonal, 23 - diagonal] = 140
    return png_bytes(arr[None])


class Thumbnails:
    """Row -> inline PNG, each read once. Images larger than `size` are resized to the evaluation view
    (shorter side, centre square); smaller ones stay as they are and the page scales them, which keeps
    a page of 28-pixel images small. A row that cannot be read gets a placeholder and its reason."""

    def __init__(self, read: Callable[[int], Tensor], names: Sequence[str], size: int) -> None:
        self.read, self.names, self.size = read, names, size
        self.cache: dict[int, bytes | None] = {}
        self.errors: dict[int, str] = {}

    def png(self, row: int) -> bytes | None:
        if row not in self.cache:
            try:
                image = self.read(row)
                if max(image.shape[-2:]) > self.size:
                    from hybridssl.data.decode import fit

                    image = fit(image, self.size)
                self.cache[row] = png_bytes(image)
            except Exception as exc:  # PIL and the dataset loaders raise many types
                self.errors[row] = f"{self.names[row]}: {type(exc).__name__}: {exc}"
                self.cache[row] = None
        return self.cache[row]

    def img(self, row: int, alt: str) -> H.Markup:
        png = self.png(row)
        missing = png is None
        attrs = {"class": "thumb missing" if missing else "thumb", "width": self.size, "height": self.size}
        return H.png_img(placeholder_png() if missing else png, f"unreadable: {self.names[row]}" if missing else alt, **attrs)


def image_thumbnails(images: Tensor, names: Sequence[str], size: int) -> Thumbnails:
    """Thumbnails of images already in memory (uint8 N x C x H x W), as the report has them."""
    return Thumbnails(lambda row: images[row], names, size)


def dataset_row(path: str, source: dict[str, Any]) -> tuple[str, str, int] | None:
    """(dataset, split, index) of a `dataset:split:index` row of a named-dataset source, else None."""
    name = source.get("dataset")
    parts = path.rsplit(":", 2)
    if not name or len(parts) != 3 or parts[0] != name or not parts[2].isdigit():
        return None
    return parts[0], parts[1], int(parts[2])


def embedding_thumbnails(emb: Embeddings, size: int) -> Thumbnails:
    """Thumbnails of an `Embeddings`' rows: files decoded with PIL at `size` (the evaluation view), a
    named dataset's images from the dataset recorded in meta["source"] (loaded once, on first use)."""
    from hybridssl.data.decode import decode_image

    source = emb.meta.get("source") or {}
    channels = 1 if emb.meta.get("channels") == 1 else 3
    loaded: dict[tuple[str, str], Any] = {}

    def dataset_image(name: str, split: str, index: int) -> Tensor:
        from hybridssl.data.sources import load_dataset, record_index

        data_dir = source.get("data_dir")
        if (name, split) not in loaded:
            if name in IN_MEMORY_DATASETS:
                loaded[name, split] = load_dataset(name, split, data_dir).images
            else:  # a folder or packed shards: read only the rows shown
                loaded[name, split] = record_index(name, data_dir, split)
        found = loaded[name, split]
        return found[index] if isinstance(found, Tensor) else found.read(index, channels)

    def read(row: int) -> Tensor:
        named = dataset_row(emb.paths[row], source)
        if named is not None:
            return dataset_image(*named)
        return decode_image(Path(emb.paths[row]), size, channels)

    return Thumbnails(read, emb.paths, size)


# ----------------------------------------------------------------------------- rendering


@dataclass
class Classes:
    """Labels (-1 = unknown) and class names, to say whether a neighbour has its query's class."""

    labels: np.ndarray
    names: list[str] | None = None

    def name(self, row: int) -> str | None:
        label = int(self.labels[row])
        if label < 0:
            return None
        return self.names[label] if self.names and label < len(self.names) else str(label)

    def mark(self, query: int, other: int) -> tuple[str, str]:
        """(css class, text) of a neighbour: same class, other class (named), or nothing when unknown."""
        if self.labels[query] < 0 or self.labels[other] < 0:
            return "", ""
        if self.labels[query] == self.labels[other]:
            return "same", "\u2713 same class"
        return "other", f"\u2717 {self.name(other)}"


def described(thumbs: Thumbnails, row: int, classes: Classes) -> str:
    name = classes.name(row)
    return f"{thumbs.names[row]}" + (f" ({name})" if name else "")


def thumb(thumbs: Thumbnails, row: int, classes: Classes, lines: Sequence[Any], class_: str = "") -> H.Markup:
    """A thumbnail with its caption lines; the row's path and class are the tooltip."""
    caption = [H.tag("span", line) if not isinstance(line, H.Markup) else line for line in lines]
    return H.tag("figure", [thumbs.img(row, described(thumbs, row, classes)), H.tag("figcaption", caption)],
                 class_=" ".join(c for c in ("nb", class_) if c), title=described(thumbs, row, classes))  # fmt: skip


def short_name(path: str) -> str:
    """A file's name (the tooltip has the whole path); a `dataset:split:index` row as it is."""
    return Path(path).name if "/" in path or "\\" in path else path


def share_text(share: float | None) -> str:
    return "n/a (no labels)" if share is None else f"{100 * share:.1f}%"


def neighbour_grid(sets: Sequence[Neighbours], thumbs: Thumbnails, classes: Classes) -> H.Markup:
    """One block per query: the query's thumbnail, then a row per set with its k nearest images, each
    with its similarity and, when labels are known, same-class or the other class's name."""
    blocks = []
    for q, query in enumerate(sets[0].queries.tolist()):
        rows = []
        for s in sets:
            share = [H.tag("div", f"same class {share_text(s.share)}")] if s.share is not None else []
            label = [H.tag("strong", s.title), *share]
            cells = [H.tag("div", label, class_="nset")] if len(sets) > 1 else []
            for j, (row, sim) in enumerate(zip(s.indices[q].tolist(), s.similarities[q].tolist(), strict=True)):
                css, text = classes.mark(query, row)
                lines = [f"{j + 1}. {sim:.4f}", H.tag("span", text, class_="mark")]
                cells.append(thumb(thumbs, row, classes, lines, css))
            rows.append(H.tag("div", cells, class_="nrow"))
        name = classes.name(query)
        head = thumb(thumbs, query, classes, [f"query {q + 1}", *([name] if name else [])], "query")
        blocks.append(H.tag("section", [head, H.tag("div", rows, class_="nsets")], class_="nq"))
    return H.tag("div", blocks, class_="ngrid")


def pair_list(title: str, pairs: Sequence[tuple[int, int, float]], thumbs: Thumbnails, classes: Classes) -> H.Markup:
    """A set's closest pairs of distinct rows, most similar first: the near-duplicates it sees."""
    items = []
    for i, j, sim in pairs:
        css, text = classes.mark(i, j)
        items.append(H.tag("div", [thumb(thumbs, i, classes, [short_name(thumbs.names[i])]),
                                   thumb(thumbs, j, classes, [short_name(thumbs.names[j])]),
                                   H.tag("p", [H.tag("strong", f"{sim:.4f}"), " ", H.tag("span", text, class_="mark")])],
                           class_=" ".join(c for c in ("pair", css) if c)))  # fmt: skip
    body = items or [H.tag("p", "fewer than two rows: no pairs", class_="note")]
    return H.tag("div", [H.tag("h3", title), *body], class_="pairset")


def meta_caption(emb: Embeddings) -> str:
    """What decided the embeddings: checkpoint, method, pooling, image size, source."""
    m = emb.meta
    source = m.get("source") or {}
    if isinstance(source, dict):
        where = ", ".join(f"{k} {v}" for k, v in source.items() if v not in (None, ""))
    else:
        where = str(source)
    parts = [f"checkpoint {m.get('checkpoint', 'n/a')}", f"method {m.get('method') or 'n/a'}",
             f"pooling {m.get('pooling', 'n/a')}", f"image size {m.get('image_size', 'n/a')}", f"{len(emb.paths)} rows"]  # fmt: skip
    return "; ".join(parts + ([f"source: {where}"] if where else []))


# ----------------------------------------------------------------------------- the page


def write_neighbour_page(output: Path, sets: list[tuple[str, Embeddings]], queries: int = 12, k: int = 8, pairs: int = 12,
                         seed: int = 0, thumbnail: int = 96) -> Path:  # fmt: skip
    """A self-contained HTML page of `queries` seeded query images with their `k` nearest neighbours in
    every set (the same queries for all, one row per set), the share of same-class neighbours per set,
    then each set's `pairs` closest pairs. `sets`: (title, embeddings) of the same images in the same
    row order. Returns the path written."""
    check_rows_agree(sets)
    if queries < 1 or k < 1 or pairs < 0 or thumbnail < 8:
        raise DataError(f"neighbours: need queries >= 1, k >= 1, pairs >= 0 and thumbnail >= 8 "
                        f"(got {queries}, {k}, {pairs}, {thumbnail})")  # fmt: skip
    first = sets[0][1]
    n = len(first.paths)
    classes = Classes(np.asarray(first.labels, dtype=np.int64), first.classes)
    thumbs = embedding_thumbnails(first, thumbnail)
    found = [seeded_neighbours(title, emb.vectors, classes.labels, queries, k, seed, meta_caption(emb)) for title, emb in sets]
    shown, k_shown = found[0].indices.shape
    summary_table = H.table(["set", "same-class neighbours", "embeddings"],
                            [[H.tag("strong", s.title), share_text(s.share), s.caption] for s in found])  # fmt: skip
    grid = neighbour_grid(found, thumbs, classes)
    pair_sets = [pair_list(title, near_duplicates(emb.vectors, pairs), thumbs, classes) for title, emb in sets]
    titles = ", ".join(title for title, _ in sets)
    body: list[Any] = [
        H.tag("h1", f"nearest neighbours: {titles}"),
        H.tag("p", f"{n} images; {shown} seeded queries (seed {seed}), the same in every set; each query's {k_shown} "
                   "nearest images by cosine similarity, the query itself excluded; generated "
                   f"{time.strftime('%Y-%m-%d %H:%M:%S')}", class_="meta"),  # fmt: skip
        summary_table,
        H.tag("p", f"same-class neighbours: the share of the {k_shown} nearest images with their query's class, over "
                   f"{found[0].summarised} seeded queries (those shown first): how often a k-NN vote hears the right class",
              class_="meta"),  # fmt: skip
        H.tag("h2", "nearest neighbours"),
        H.tag("p", "a block per query: its thumbnail, then a row per set; under each neighbour its rank, cosine similarity "
                   "and, with labels, \u2713 same class or \u2717 the other class (green and red frames)", class_="meta"),  # fmt: skip
        grid,
        H.tag("h2", "closest pairs"),
        H.tag("p", f"the {pairs} most similar pairs of distinct images in each set, most similar first: near-duplicates "
                   "(a similarity near 1) are the same picture twice, or a set that cannot tell them apart", class_="meta"),  # fmt: skip
        H.tag("div", pair_sets, class_="pairsets"),
    ]
    if thumbs.errors:
        first_error = next(iter(thumbs.errors.values()))
        note = f"{len(thumbs.errors)} image(s) could not be read and show a placeholder; first: {first_error}"
        body.insert(3, H.tag("p", note, class_="note"))
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(output, H.page(f"nearest neighbours: {titles}", body))
    return output


# ----------------------------------------------------------------------------- the report's section


def sample_neighbours(title: str, features: np.ndarray | Tensor, images: Tensor, labels: np.ndarray | None,
                      class_names: list[str] | None, queries: int = 6, k: int = 8, seed: int = 0,
                      thumbnail: int = 64) -> H.Markup:  # fmt: skip
    """The "nearest neighbours" section of `hybridssl report` for one stage: images already in memory
    (the seeded test sample of its 2-D map) with their features, so nothing is decoded or embedded twice."""
    n = len(images)
    if n < 2:
        return H.tag("p", f"{title}: nearest neighbours need at least 2 test images ({n})", class_="note")
    classes = Classes(np.full(n, -1, dtype=np.int64) if labels is None else np.asarray(labels, dtype=np.int64), class_names)
    thumbs = image_thumbnails(images, [f"test sample {i}" for i in range(n)], thumbnail)
    found = seeded_neighbours(title, features, classes.labels, queries, k, seed)
    shown, k_shown = found.indices.shape
    same = "" if found.share is None else (f"; {share_text(found.share)} of the {k_shown} nearest have their query's class "
                                           f"({found.summarised} queries)")  # fmt: skip
    caption = (f"{title}: {shown} seeded test images (left) and their {k_shown} nearest among the {n} test images of "
               f"the map, by cosine similarity of the same features, the query excluded{same}")  # fmt: skip
    grid = neighbour_grid([found], thumbs, classes)
    return H.tag("div", [H.tag("h3", "nearest neighbours"), H.tag("p", caption, class_="meta"), grid], class_="neighbours")
