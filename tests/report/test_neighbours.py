"""Nearest-neighbour pages (report/neighbours.py): seeded queries shared by every set, the query never its
own neighbour, planted duplicates found first, thumbnails from files and named datasets, and pages
that render in headless Chromium with one block per query, a row per set, and the pairs."""

from __future__ import annotations

import base64
import io
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hybridssl.embedding.encoder import Embeddings
from hybridssl.errors import DataError
from hybridssl.report.neighbours import find_neighbours, same_class_share, select_queries, write_neighbour_page
from hybridssl.report.run_report import ReportOptions, write_report
from tests.report.browser import rendered_dom

CLASSES = ["shirt", "<b>bag</b>", "boot"]


class Elements(HTMLParser):
    """Every start tag of a page as (tag, attributes), in document order."""

    def __init__(self, page: str) -> None:
        super().__init__()
        self.found: list[tuple[str, dict[str, str]]] = []
        self.feed(page)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.found.append((tag, {k: v or "" for k, v in attrs}))

    def with_class(self, name: str) -> list[dict[str, str]]:
        return [a for _, a in self.found if name in a.get("class", "").split()]


def blocks(page: str) -> list[str]:
    """The HTML of each query block, in order."""
    return [part.split("</section>")[0] for part in page.split('<section class="nq">')[1:]]


def query_titles(page: str) -> list[str]:
    return [Elements(b).with_class("query")[0]["title"] for b in blocks(page)]


def neighbour_titles(block: str) -> list[str]:
    """The tooltips (path and class) of a query block's neighbours, row by row."""
    return [a["title"] for a in Elements(block).with_class("nb") if "query" not in a["class"].split()]


def png_pixels(img_src: str) -> np.ndarray:
    data = base64.b64decode(img_src.split(",", 1)[1])
    return np.asarray(Image.open(io.BytesIO(data)))


@pytest.fixture
def image_files(tmp_path: Path) -> list[str]:
    """40 small PNGs, one of them named with markup."""
    rng = np.random.default_rng(0)
    paths = []
    for i in range(40):
        path = tmp_path / "images" / (f"img{i:02d}.png" if i != 7 else "<i>7</i>.png")
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    return paths


def embeddings(paths: list[str], vectors: np.ndarray, labels: np.ndarray | None = None, **meta) -> Embeddings:
    labels = np.full(len(paths), -1) if labels is None else labels
    return Embeddings(vectors.astype(np.float32), list(paths), labels.astype(np.int64), CLASSES, meta=meta)


def planted(n: int, dim: int = 16, seed: int = 0, duplicate: tuple[int, int] = (3, 30)) -> np.ndarray:
    """Random vectors with row duplicate[1] a near copy of row duplicate[0]."""
    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(n, dim))
    a, b = duplicate
    vectors[b] = vectors[a] + 1e-3 * rng.normal(size=dim)
    return vectors


# ----------------------------------------------------------------------------- selection


def test_queries_are_seeded_distinct_and_a_smaller_count_is_a_prefix():
    a = select_queries(100, 12, seed=0)
    assert len(a) == 12 and len(set(a.tolist())) == 12 and a.max() < 100
    assert np.array_equal(a, select_queries(100, 12, seed=0))
    assert not np.array_equal(a, select_queries(100, 12, seed=1))
    assert np.array_equal(select_queries(100, 1000, seed=0)[:12], a), "the summary queries start with the shown ones"
    assert sorted(select_queries(5, 12).tolist()) == [0, 1, 2, 3, 4], "never more queries than rows"


def test_the_query_is_never_its_own_neighbour_and_its_planted_duplicate_comes_first():
    vectors = planted(40, duplicate=(3, 30))
    queries = np.array([3, 30, 5])
    found = find_neighbours("set", vectors, queries, k=5)
    assert found.indices.shape == (3, 5)
    for row, query in enumerate(queries):
        assert query not in found.indices[row]
    assert found.indices[0, 0] == 30 and found.indices[1, 0] == 3
    assert found.similarities[0, 0] > 0.999 and np.all(np.diff(found.similarities, axis=1) <= 0), "most similar first"


def test_same_class_share_counts_labelled_neighbours_only():
    labels = np.array([0, 0, 1, -1])
    queries = np.array([0, 2])
    indices = np.array([[1, 2], [3, 0]])  # query 0: same, other; query 2: unknown, other
    assert same_class_share(labels, queries, indices) == pytest.approx(1 / 3)
    assert same_class_share(np.full(4, -1), queries, indices) is None


# ----------------------------------------------------------------------------- the page


def test_page_shows_the_same_seeded_queries_for_every_set_with_k_neighbours_and_similarities(image_files, tmp_path):
    n = len(image_files)
    labels = np.arange(n) % 3
    first = embeddings(image_files, planted(n), labels, checkpoint="mae.ckpt", pooling="cls", image_size=32)
    second = embeddings(image_files, np.random.default_rng(5).normal(size=(n, 16)), labels, checkpoint="tuned.ckpt")
    path = write_neighbour_page(tmp_path / "out" / "nn.html", [("MAE", first), ("tuned", second)], queries=5, k=4, pairs=3, seed=7)
    page = path.read_text()
    expected = [image_files[i] for i in select_queries(n, 5, seed=7)]
    assert [t.split(" (")[0] for t in query_titles(page)] == expected, "seeded queries, in order"
    swapped = write_neighbour_page(tmp_path / "swapped.html", [("tuned", second), ("MAE", first)], queries=5, k=4, pairs=3, seed=7)
    assert query_titles(swapped.read_text()) == query_titles(page), "the queries do not depend on the vectors"
    for block, query in zip(blocks(page), select_queries(n, 5, seed=7)):
        rows = block.split('<div class="nrow">')[1:]
        assert len(rows) == 2 and "MAE" in rows[0] and "tuned" in rows[1], "a row per set, in the order given"
        for row_html, emb in zip(rows, (first, second)):
            found = find_neighbours("", emb.vectors, np.array([query]), 4)
            shown = [t.split(" (")[0] for t in neighbour_titles(row_html)]
            assert shown == [image_files[i] for i in found.indices[0]], "each set's own neighbours, most similar first"
            assert all(f"{s:.4f}" in row_html for s in found.similarities[0]), "the similarity under each thumbnail"
            assert image_files[query] not in shown
    share = same_class_share(labels, select_queries(n, 1000, seed=7), find_neighbours("", first.vectors, select_queries(n, 1000, seed=7), 4).indices)
    assert f"{100 * share:.1f}%" in page.split("<h2>")[0], "the same-class share at the top"
    assert "checkpoint mae.ckpt" in page and "pooling cls" in page and "image size 32" in page
    assert "<i>7</i>" not in page and "&lt;i&gt;7&lt;/i&gt;.png" in page, "paths are escaped"


def test_same_and_other_class_marks_follow_the_labels(image_files, tmp_path):
    n = len(image_files)
    labels = np.arange(n) % 3
    page = write_neighbour_page(tmp_path / "nn.html", [("a", embeddings(image_files, planted(n), labels))], queries=6, k=5).read_text()
    marks = 0
    for block, query in zip(blocks(page), select_queries(n, 6)):
        for element in Elements(block).with_class("nb"):
            if "query" in element["class"]:
                continue
            row = image_files.index(element["title"].split(" (")[0])
            assert ("same" if labels[row] == labels[query] else "other") in element["class"].split()
            marks += 1
    assert marks == 6 * 5
    unlabelled = write_neighbour_page(tmp_path / "u.html", [("a", embeddings(image_files, planted(n)))], queries=2, k=3).read_text()
    assert 'class="nb same"' not in unlabelled and 'class="nb other"' not in unlabelled
    assert "n/a (no labels)" in unlabelled


def test_the_planted_duplicate_is_the_first_pair_of_its_set(image_files, tmp_path):
    n = len(image_files)
    sets = [("dup 3-30", embeddings(image_files, planted(n, duplicate=(3, 30)))),
            ("dup 12-25", embeddings(image_files, planted(n, seed=1, duplicate=(12, 25))))]  # fmt: skip
    page = write_neighbour_page(tmp_path / "nn.html", sets, queries=2, k=2, pairs=4).read_text()
    columns = page.split('<div class="pairset">')[1:]
    assert len(columns) == 2
    for column, pair in zip(columns, ((3, 30), (12, 25))):
        first = column.split('<div class="pair')[1]
        assert [t.split(" (")[0] for t in (a["title"] for a in Elements(first).with_class("nb"))] == [image_files[i] for i in pair]
        assert len(Elements(column).with_class("pair")) == 4


def test_sets_of_different_images_or_orders_are_refused(image_files, tmp_path):
    n = len(image_files)
    first = embeddings(image_files, planted(n))
    with pytest.raises(DataError, match="'short' has 39 rows but 'full' has 40"):
        write_neighbour_page(tmp_path / "nn.html", [("full", first), ("short", embeddings(image_files[:-1], planted(n - 1)))])
    reordered = image_files[:]
    reordered[4], reordered[9] = reordered[9], reordered[4]
    with pytest.raises(DataError, match="row 4 is .*img09.png.* in 'shuffled'"):
        write_neighbour_page(tmp_path / "nn.html", [("full", first), ("shuffled", embeddings(reordered, planted(n)))])
    assert not (tmp_path / "nn.html").exists()


def test_unreadable_files_get_a_placeholder_and_text_is_escaped(image_files, tmp_path):
    n = len(image_files)
    broken = image_files[:]
    for row in select_queries(n, 3)[:2]:
        broken[row] = str(tmp_path / f"missing-{row}.png")
    Path(broken[select_queries(n, 3)[1]]).write_bytes(b"not a png")
    page = write_neighbour_page(tmp_path / "nn.html", [("<script>alert(1)</script>", embeddings(broken, planted(n)))],
                                queries=3, k=3).read_text()  # fmt: skip
    assert len(Elements(page).with_class("missing")) >= 2, "a placeholder for each unreadable query"
    assert "2 image(s) could not be read" in page
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert "http://" not in page and "https://" not in page


def test_named_dataset_rows_show_the_dataset_images(fmnist_dir, tmp_path):
    from hybridssl.data.sources import load_dataset

    test = load_dataset("fashion-mnist", "test", fmnist_dir)
    rows = list(range(127, 87, -1))  # 40 rows, not in index order: the row's own index picks the image
    emb = Embeddings(planted(len(rows)).astype(np.float32), [f"fashion-mnist:test:{i}" for i in rows],
                     test.labels.numpy()[rows], test.classes,
                     meta={"source": {"dataset": "fashion-mnist", "split": "test", "data_dir": str(fmnist_dir)}})  # fmt: skip
    page = write_neighbour_page(tmp_path / "nn.html", [("fmnist", emb)], queries=4, k=3, pairs=2).read_text()
    assert "could not be read" not in page
    for block, query in zip(blocks(page), select_queries(len(rows), 4)):
        src = next(a["src"] for t, a in Elements(block).found if t == "img")
        assert np.array_equal(png_pixels(src), test.images[rows[query], 0].numpy()), "the query's own image, at its size"
    assert "source: dataset fashion-mnist, split test" in page


# ----------------------------------------------------------------------------- rendered




def test_page_renders_in_headless_chromium_with_a_block_per_query_a_row_per_set_and_the_pairs(image_files, tmp_path):
    n, queries, k, pairs = len(image_files), 5, 4, 3
    labels = np.arange(n) % 3
    sets = [(f"set {s}", embeddings(image_files, planted(n, seed=s), labels)) for s in range(2)]
    dom = Elements(rendered_dom(write_neighbour_page(tmp_path / "nn.html", sets, queries, k, pairs), tmp_path))
    body = next(a for t, a in dom.found if t == "body")
    thumbnails = queries * (1 + 2 * k) + 2 * pairs * 2
    assert (body["data-images"], body["data-broken"]) == (str(thumbnails), "0")
    assert len(dom.with_class("nq")) == queries
    assert len(dom.with_class("nrow")) == queries * 2
    assert len(dom.with_class("query")) == queries
    assert len(dom.with_class("pair")) == pairs * 2
    assert len(dom.with_class("pairset")) == 2


@pytest.fixture(scope="module")
def report_page(tiny_mae_run, fmnist_dir, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("neighbours") / "run"
    shutil.copytree(tiny_mae_run, run, ignore=shutil.ignore_patterns("report.html"))
    options = ReportOptions(embedding_samples=50, reconstruction_images=2, neighbour_queries=3, neighbours=4, data_dir=fmnist_dir)
    return write_report(run, options=options)


def test_run_report_has_a_neighbour_section_from_the_map_features_that_renders(report_page, tmp_path):
    page = report_page.read_text()
    section = page[page.index('<div class="neighbours">') :]
    assert "<h3>nearest neighbours</h3>" in section and "among the 50 test images of" in section
    assert len(blocks(section)) == 3
    assert all(len(neighbour_titles(b)) == 4 for b in blocks(section))
    assert "same class" in section or "\u2717" in section, "the fixture's test images are labelled"
    dom = Elements(rendered_dom(report_page, tmp_path))
    body = next(a for t, a in dom.found if t == "body")
    assert body["data-broken"] == "0"
    assert len(dom.with_class("nq")) == 3 and len(dom.with_class("nb")) == 3 * (1 + 4)
