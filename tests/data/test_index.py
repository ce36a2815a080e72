"""File index: the layouts users have, the cache and its invalidation, subsets chosen before decoding."""

from __future__ import annotations

import os
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hybridssl.data.index import file_index, source_for
from hybridssl.data.sources import folder_index, load_dataset
from hybridssl.errors import DataError


def jpeg(path: Path, value: int = 100, size: tuple[int, int] = (40, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size[1], size[0], 3), value, dtype=np.uint8)).save(path)
    return path


def test_a_train_val_root_is_two_splits_never_two_classes(tmp_path):
    for split, n in (("train", 6), ("val", 2)):
        for i in range(n):
            jpeg(tmp_path / "data" / split / f"cat{i % 2}" / f"{i}.jpg")
    train = folder_index(tmp_path / "data", "train")
    val = folder_index(tmp_path / "data", "test")
    assert train.classes == val.classes == ["cat0", "cat1"]
    assert len(train) == 6 and len(val) == 2
    assert all(str(train.path(i)).startswith(str(tmp_path / "data" / "train")) for i in range(6))
    assert all(str(val.path(i)).startswith(str(tmp_path / "data" / "val")) for i in range(2))
    images = load_dataset("folder", "train", tmp_path / "data", image_size=8)
    assert images.classes == ["cat0", "cat1"] and len(images) == 6, "the in-memory path reads the same layout"


def test_class_folders_flat_folders_and_nested_images(tmp_path):
    jpeg(tmp_path / "labelled" / "b" / "deep" / "x.jpg")
    jpeg(tmp_path / "labelled" / "a" / "y.png")
    index = file_index(tmp_path / "labelled")
    assert index.classes == ["a", "b"] and index.labels.tolist() == [0, 1]
    jpeg(tmp_path / "flat" / "1.jpg"), jpeg(tmp_path / "flat" / "2.jpg")
    (tmp_path / "flat" / "notes.txt").write_text("not an image")
    flat = file_index(tmp_path / "flat")
    assert flat.classes is None and flat.labels.tolist() == [-1, -1] and not flat.labelled


def test_a_file_list_with_class_names_or_integers_and_relative_paths(tmp_path):
    jpeg(tmp_path / "imgs" / "a.jpg"), jpeg(tmp_path / "imgs" / "b.jpg"), jpeg(tmp_path / "elsewhere" / "c.jpg")
    names = tmp_path / "names.csv"
    names.write_text(f"path,label\nimgs/a.jpg,dog\nimgs/b.jpg,cat\n{tmp_path / 'elsewhere' / 'c.jpg'},dog\n")
    index = file_index(source_for(names, "train"))
    assert index.classes == ["cat", "dog"] and index.labels.tolist() == [1, 0, 1]
    assert index.path(0) == tmp_path / "imgs" / "a.jpg" and index.path(2) == tmp_path / "elsewhere" / "c.jpg"
    ints = tmp_path / "ints.txt"
    ints.write_text("imgs/a.jpg,3\nimgs/b.jpg,1\n")
    assert file_index(ints).labels.tolist() == [3, 1] and file_index(ints).num_classes == 4
    unlabelled = tmp_path / "plain.csv"
    unlabelled.write_text("imgs/a.jpg\nimgs/b.jpg\n")
    assert not file_index(unlabelled).labelled
    mixed = tmp_path / "mixed.csv"
    mixed.write_text("imgs/a.jpg,1\nimgs/b.jpg\n")
    with pytest.raises(DataError, match="line 2 has no label"):
        file_index(mixed)
    assert len(load_dataset("folder", "train", names, image_size=8)) == 3


def test_images_beside_class_folders_are_named_as_unused_every_time(tmp_path):
    jpeg(tmp_path / "d" / "cats" / "1.jpg"), jpeg(tmp_path / "d" / "loose.jpg")
    for attempt in ("listed", "from the cache"):
        with pytest.warns(UserWarning, match=r"1 image\(s\) directly in .*loose.jpg.*not used.*1 classes"):
            index = file_index(tmp_path / "d")
        assert index.classes == ["cats"] and len(index) == 1, attempt
    jpeg(tmp_path / "clean" / "cats" / "1.jpg")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        file_index(tmp_path / "clean")


def test_the_index_is_cached_and_rebuilt_when_a_folder_changes(tmp_path, monkeypatch):
    for i in range(3):
        jpeg(tmp_path / "d" / "k" / f"{i}.jpg")
    assert len(file_index(tmp_path / "d")) == 3
    cached = list((tmp_path / "index-cache").glob("*.npz"))
    assert len(cached) == 1
    import hybridssl.data.index as index_module

    calls = []
    original = index_module.list_folder
    monkeypatch.setattr(index_module, "list_folder", lambda folder: calls.append(folder) or original(folder))
    assert len(file_index(tmp_path / "d")) == 3 and not calls, "the cached index is used, nothing listed"
    time.sleep(0.01)
    jpeg(tmp_path / "d" / "k" / "new.jpg")
    os.utime(tmp_path / "d" / "k")  # some filesystems round times: make the change visible for sure
    assert len(file_index(tmp_path / "d")) == 4 and len(calls) == 1, "a new file invalidates the cache"


def test_a_cache_listing_fewer_folder_times_than_folders_is_rebuilt(tmp_path):
    """Every listed folder's time is checked: a cache short of one (damaged, or from another version) must
    not let the folder it no longer checks go stale."""
    for i in range(3):
        jpeg(tmp_path / "d" / "k" / f"{i}.jpg")
    assert len(file_index(tmp_path / "d")) == 3
    (cache,) = (tmp_path / "index-cache").glob("*.npz")
    with np.load(cache) as z:
        arrays = dict(z)
    assert arrays["dirs"].tolist()[-1].endswith("k"), "the class folder is the last one listed"
    np.savez(cache, **{**arrays, "mtimes": arrays["mtimes"][:-1]})
    time.sleep(0.01)
    jpeg(tmp_path / "d" / "k" / "new.jpg")
    os.utime(tmp_path / "d" / "k")
    assert len(file_index(tmp_path / "d")) == 4


def test_limit_selects_before_decoding_and_matches_the_in_memory_subset(tmp_path):
    for i in range(20):
        jpeg(tmp_path / "d" / f"{i:02d}.jpg", value=i * 10)
    index = folder_index(tmp_path / "d", "train")
    subset = index.take(5, seed=3)
    assert len(subset) == 5 and subset.take(5, seed=3) is subset
    stored = load_dataset("folder", "train", tmp_path / "d", image_size=8).take(5, seed=3)
    decoded_values = sorted(int(img[0, 0, 0]) for img in stored.images)
    assert decoded_values == sorted(int(os.path.basename(subset.path(i)).split(".")[0]) * 10 for i in range(5))


def test_missing_and_empty_folders_fail_with_one_line(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        folder_index(tmp_path / "missing", "train")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="contains no images"):
        folder_index(tmp_path / "empty", "train")
    (tmp_path / "half" / "train").mkdir(parents=True)
    with pytest.raises(DataError, match="no val/"):
        folder_index(tmp_path / "half", "test")


def test_a_val_folder_missing_a_class_is_numbered_by_trains_class_names(tmp_path):
    """val/ lacking train's first class numbers its folders from 0 on its own; evaluation and packing
    renumber them by name (val 'b' is train's 'b', not train's 'a'), and an unknown class is an error."""
    from hybridssl.data.pack import file_splits
    from hybridssl.evaluation.data import with_classes_of

    for split, names in (("train", "abc"), ("val", "bc")):
        for name in names:
            jpeg(tmp_path / "data" / split / name / f"{split}{name}.jpg")
    train, val = folder_index(tmp_path / "data", "train"), folder_index(tmp_path / "data", "test")
    assert val.classes == ["b", "c"] and val.labels.tolist() == [0, 1]
    from hybridssl.data.streaming import StreamingSet

    aligned = with_classes_of(StreamingSet("folder", train, 8, 3), StreamingSet("folder", val, 8, 3))
    assert aligned.classes == ["a", "b", "c"] and aligned.index.labels.tolist() == [1, 2]
    stored = with_classes_of(load_dataset("folder", "train", tmp_path / "data", image_size=8),
                             load_dataset("folder", "test", tmp_path / "data", image_size=8))  # fmt: skip
    assert stored.labels.tolist() == [1, 2]
    assert file_splits(tmp_path / "data")["test"].labels.tolist() == [1, 2], "packs store train's numbering"
    jpeg(tmp_path / "data" / "val" / "zebra" / "z.jpg")
    with pytest.raises(DataError, match="classes the train split lacks: zebra"):
        with_classes_of(StreamingSet("folder", train, 8, 3), StreamingSet("folder", folder_index(tmp_path / "data", "test"), 8, 3))


def test_file_lists_saved_by_spreadsheets_and_with_other_headers(tmp_path):
    jpeg(tmp_path / "a.jpg"), jpeg(tmp_path / "b.jpg")
    listed = tmp_path / "list.csv"
    listed.write_bytes("\ufefffilename,class\na.jpg,x\nb.jpg,y\n".encode())
    index = file_index(listed)
    assert len(index) == 2 and index.classes == ["x", "y"] and index.path(0) == tmp_path / "a.jpg"


def _index_in_a_process(folder: str, calls: str) -> None:
    import hybridssl.data.index as index_module

    original = index_module.list_folder

    def slow_listing(path):
        with open(calls, "a") as f:
            f.write("listed\n")
        time.sleep(0.5)  # long enough for the other processes to arrive while it lists
        return original(path)

    index_module.list_folder = slow_listing
    assert len(index_module.file_index(Path(folder))) == 3


def test_processes_starting_together_list_a_cold_folder_once(tmp_path):
    """As the 8 processes of a torchrun node do: one lists, the others wait and read its index."""
    import multiprocessing

    for i in range(3):
        jpeg(tmp_path / "d" / "k" / f"{i}.jpg")
    calls = tmp_path / "calls.txt"
    context = multiprocessing.get_context("fork")
    procs = [context.Process(target=_index_in_a_process, args=(str(tmp_path / "d"), str(calls))) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    assert calls.read_text().splitlines() == ["listed"]


@pytest.mark.parametrize("damage", ["empty", "truncated", "garbage", "flipped byte"])
def test_a_damaged_index_cache_is_named_and_rebuilt(tmp_path, damage):
    """A torn or corrupt cache file broke every later run of its folder with a BadZipFile / EOFError
    traceback that did not name it."""
    for i in range(3):
        jpeg(tmp_path / "d" / "k" / f"{i}.jpg")
    assert len(file_index(tmp_path / "d")) == 3
    (cache,) = (tmp_path / "index-cache").glob("*.npz")
    good = cache.read_bytes()
    middle = len(good) // 2
    cache.write_bytes({"empty": b"", "truncated": good[:middle], "garbage": b"PK\x03\x04" + bytes(300),
                       "flipped byte": good[:middle] + bytes([good[middle] ^ 0x55]) + good[middle + 1 :]}[damage])  # fmt: skip
    with pytest.warns(UserWarning, match=f"the cached index {cache} is damaged .*listing the folder again") as caught:
        assert len(file_index(tmp_path / "d")) == 3
    assert sum("is damaged" in str(w.message) for w in caught) == 1, "named once"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(file_index(tmp_path / "d")) == 3, "rewritten: the next run reads it quietly"
    with np.load(cache) as z:
        assert len(z["paths"]) == 3


def test_a_symlink_loop_is_named_and_not_followed(tmp_path):
    """Following a directory symlink back to a folder it lies in listed until the path grew too long
    (a traceback); links to other folders are still followed."""
    root = tmp_path / "d"
    jpeg(root / "a" / "x.jpg")
    jpeg(root / "a" / "sub" / "y.jpg")
    jpeg(root / "b" / "z.jpg")
    (root / "a" / "sub" / "up").symlink_to("..")  # loop to its parent
    (root / "a" / "self").symlink_to(".")  # loop to itself
    (root / "b" / "to_a").symlink_to("../a")  # not a loop: followed
    (root / "root_again").symlink_to(".")  # a class folder that is the root itself
    with pytest.warns(UserWarning, match="a loop") as caught:
        index = file_index(root)
    looped = sorted(str(w.message).split(" is a symlink")[0] for w in caught if "a loop" in str(w.message))
    assert looped == sorted(str(root / p) for p in ("a/self", "a/sub/up", "b/to_a/self", "b/to_a/sub/up", "root_again"))
    assert index.classes == ["a", "b"]
    assert sorted(os.fsdecode(bytes(p)) for p in index.paths) == ["a/sub/y.jpg", "a/x.jpg", "b/to_a/sub/y.jpg", "b/to_a/x.jpg", "b/z.jpg"]
