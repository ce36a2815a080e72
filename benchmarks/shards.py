"""Shards on this machine: litdata (what `hybridssl pack` writes) vs WebDataset tar shards vs plain files.

On one generated ImageNet-style folder (train/ + val/, N photo-like JPEGs of 300-500 px,
hybridssl.data.synthetic; generated once and reused at --root), measured side by side in one
invocation:

1. Pack: `hybridssl.data.pack.pack(root, OUT)` (litdata, 64MB chunks, both splits) against WebDataset
   tar shards written with `webdataset.ShardWriter` (each file's own JPEG bytes + label + index, ~64MB
   per shard, both splits); the folder needs nothing. Seconds (median of the rounds) and size on disk.
2. Read throughput at 224 px, 1 and 2 DataLoader workers, batch 64: decode + RandomResizedCrop + flip
   through (a) our folder path (CropDataset over FileIndex, StreamingLoader), (b) our shards path
   (CropDataset over ShardIndex, StreamingLoader), the same with LITDATA_BATCH_DECODE=1 (litdata's reader
   then deserializes only the record asked for, not a window of up to 256), (c) WebDataset (`WebDataset(urls, shardshuffle=...)
   .shuffle(1000)`, the JPEG bytes decoded by the same torchvision.io call as the shards path and
   cropped by the same `cut_crops`, in a torch DataLoader): only the reading differs. Images/s counted
   after the first batch (which is timed apart: worker start + first reads); rounds alternate the
   pipelines; medians.
3. Resume: our loader's state_dict() after k batches, loaded into a fresh loader (new workers), against
   an uninterrupted run: are the remaining batches' ids and crops identical? WebDataset (no state to
   save): a restarted pipeline, (i) as usually configured (unseeded shuffles), (ii) with every shuffle
   seeded, each compared with the uninterrupted run's batches k..; and (iii) the seeded pipeline with
   its first k batches read and dropped (the skip workaround), with the time that skipping costs.
4. Random access: mean / median time of `index.read(i, 3)` (read + decode) over the same random
   indices for the folder and the litdata shards (default, and LITDATA_BATCH_DECODE=1), and of the
   bytes alone (file read vs litdata record).

    python benchmarks/shards.py --quick          # N=200, 1 round, batch 16, ~100 images per measurement: checks the script
    python benchmarks/shards.py                  # N=3000, 3 rounds of ~1000 images (~15 min on 2 cores)

Needs `pip install webdataset`. Everything lives under --root's parent folder (--work).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import multiprocessing
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torchvision.io
import torchvision.transforms.v2.functional  # noqa: F401  here once, not in each worker's first-batch time
from torch.utils.data import DataLoader

from hybridssl.data.shards import decode_bytes
from hybridssl.data.sources import record_index
from hybridssl.data.streaming import CropDataset, StreamingLoader, cut_crops, sample_seed
from hybridssl.data.views import Crop

CROPS = [Crop(224, (0.2, 1.0))]
CHANNELS = 3
SHARD_BYTES = 64_000_000  # ~64MB, as litdata's chunk_bytes="64MB"


def machine() -> str:
    try:
        out = subprocess.run(["lscpu"], check=False, capture_output=True, text=True).stdout
        model = next(
            line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")
        )
    except (OSError, StopIteration):
        model = "unknown CPU"
    return f"{model}, {os.cpu_count()} CPUs"


def header() -> str:
    return (f"<!-- {time.strftime('%Y-%m-%d')} on {machine()}; torch {torch.__version__}; "
            f"command: python benchmarks/shards.py {' '.join(sys.argv[1:])} -->")  # fmt: skip


def disk_bytes(path: Path) -> int:
    """Apparent size of the files (what would be copied or uploaded)."""
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def files_count(path: Path) -> int:
    return sum(1 for p in path.rglob("*") if p.is_file())


def mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


# ----------------------------------------------------------------------------- the data


def photo_folder(root: Path, n: int) -> Path:
    from hybridssl.data.synthetic import write_photo_folder

    marker = root / ".bench-shards.json"
    if marker.exists() and json.loads(marker.read_text()).get("images") == n:
        return root
    if root.exists():
        shutil.rmtree(root)
    start = time.perf_counter()
    write_photo_folder(root, n, num_classes=4, layout="train_val", sizes=(300, 500))
    marker.write_text(json.dumps({"images": n}))
    print(f"(generated {n} JPEGs under {root} in {time.perf_counter() - start:.0f} s)", file=sys.stderr)
    return root


def pack_litdata(root: Path, out: Path) -> float:
    from hybridssl.data.pack import pack

    if out.exists():
        shutil.rmtree(out)
    method = multiprocessing.get_start_method()
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)  # litdata's progress lines (its worker's too) go to stderr, not into the tables
    try:
        start = time.perf_counter()
        pack(str(root), out, chunk_bytes="64MB")
        seconds = time.perf_counter() - start
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)
    # litdata's optimize() sets the process-wide start method to "spawn" (force=True): every DataLoader
    # made afterwards in this process would spawn its workers (seconds to the first batch, measured)
    multiprocessing.set_start_method(method, force=True)
    return seconds


def pack_webdataset(root: Path, out: Path) -> float:
    """Each split's files, in index order, as tar shards of ~64MB: KEY.jpg (the file's own bytes), KEY.cls, KEY.idx."""
    import webdataset as wds

    from hybridssl.data.pack import file_splits

    if out.exists():
        shutil.rmtree(out)
    start = time.perf_counter()
    for split, source in file_splits(root).items():
        (out / split).mkdir(parents=True)
        with wds.ShardWriter(
            str(out / split / "shard-%06d.tar"), maxsize=SHARD_BYTES, maxcount=10**9, verbose=0
        ) as sink:
            for i in range(len(source)):
                sink.write(
                    {
                        "__key__": f"{i:08d}",
                        "jpg": source.encoded(i),
                        "cls": str(int(source.labels[i])),
                        "idx": str(i),
                    }
                )
    return time.perf_counter() - start


def wds_urls(out: Path) -> list[str]:
    return sorted(str(p) for p in (out / "train").glob("shard-*.tar"))


# ----------------------------------------------------------------------------- the pipelines


class WdsCrops:
    """A WebDataset sample -> the same record as CropDataset's (crops keyed by (seed, epoch, index))."""

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def __call__(self, sample: dict) -> dict:
        i = int(sample["idx"])
        image = decode_bytes(sample["jpg"], CHANNELS)
        return {
            "crops": cut_crops(image, CROPS, sample_seed(self.seed, 0, i)),
            "id": i,
            "label": int(sample["cls"]),
        }


def collate_wds(samples: list[dict]) -> dict:
    return {"crops": [torch.stack([s["crops"][k] for s in samples]) for k in range(len(CROPS))],
            "ids": torch.tensor([s["id"] for s in samples], dtype=torch.int64)}  # fmt: skip


def wds_loader(urls: list[str], workers: int, batch: int, seed: int | None) -> DataLoader:
    """`seed=None`: as usually written (shard and sample shuffles seeded from the clock/pid);
    an int: every shuffle seeded."""
    import webdataset as wds

    dataset = wds.WebDataset(urls, shardshuffle=len(urls), seed=seed, empty_check=False)
    dataset = dataset.shuffle(1000, seed=seed) if seed is not None else dataset.shuffle(1000)
    dataset = dataset.map(WdsCrops(seed if seed is not None else 0))
    return DataLoader(dataset, batch_size=batch, num_workers=workers, collate_fn=collate_wds,
                      prefetch_factor=4 if workers else None)  # fmt: skip


@contextlib.contextmanager
def per_item_decode(on: bool = True):
    """litdata's LITDATA_BATCH_DECODE=1 while the block runs (DataLoader workers forked inside it inherit
    it): its reader then deserializes only the record asked for. By default ("auto") a `bytes` field
    gets a window of up to 256 records deserialized per read, made for sequential reading; with random
    access by index all but one are thrown away (measured in the random-access table)."""
    if not on:
        yield
        return
    os.environ["LITDATA_BATCH_DECODE"] = "1"
    try:
        yield
    finally:
        del os.environ["LITDATA_BATCH_DECODE"]


def our_loader(kind: str, root: Path, packed: Path, workers: int, batch: int, seed: int) -> StreamingLoader:
    index = (
        record_index("folder", root, "train") if kind == "files" else record_index("shards", packed, "train")
    )
    return StreamingLoader(CropDataset(index, CROPS, CHANNELS, seed), batch, seed=seed, num_workers=workers)


def close(loader) -> None:
    """Stops the loader's worker processes now (a StreamingLoader's persistent workers would otherwise
    live until the garbage collector breaks its reference cycle, in the middle of a later measurement)."""
    dataloader = loader.dataloader if isinstance(loader, StreamingLoader) else loader
    if getattr(dataloader, "_iterator", None) is not None:
        dataloader._iterator._shutdown_workers()
        dataloader._iterator = None
    gc.collect()


def timed_read(loader, images: int) -> tuple[float, float, int]:
    """(seconds to the first batch, images/s after it, images counted after it)."""
    start = time.perf_counter()
    it = iter(loader)
    next(it)
    first = time.perf_counter() - start
    count, t0 = 0, time.perf_counter()
    for b in it:
        count += len(b["ids"])
        if count >= images:
            break
    rate = count / (time.perf_counter() - t0)
    if hasattr(it, "_shutdown_workers"):
        it._shutdown_workers()
    del it
    close(loader)
    return first, rate, count


# ----------------------------------------------------------------------------- sections


def section_pack(root: Path, work: Path, rounds: int) -> tuple[Path, Path]:
    lit, tar = work / "litdata", work / "wds"
    times: dict[str, list[float]] = {"litdata": [], "webdataset": []}
    for _ in range(rounds):
        times["litdata"].append(pack_litdata(root, lit))
        times["webdataset"].append(pack_webdataset(root, tar))
    train, val = (len(record_index("folder", root, s)) for s in ("train", "test"))
    print(header())
    print(
        f"Pack: {train + val} JPEGs ({train} train + {val} val), both splits; medians of {rounds} round(s).\n"
    )
    print("| storage | pack time (s) | rounds (s) | files | size on disk | vs folder |")
    print("|---|---|---|---|---|---|")
    folder_size = sum(disk_bytes(root / s) for s in ("train", "val"))
    print(
        f"| folder (JPEG files) | – | – | {files_count(root / 'train') + files_count(root / 'val')} | {mb(folder_size)} | 1.00 |"
    )
    for name, path in (
        ("litdata (`hybridssl pack`, 64MB chunks)", lit),
        ("WebDataset tar (ShardWriter, ~64MB)", tar),
    ):
        key = "litdata" if name.startswith("litdata") else "webdataset"
        size = disk_bytes(path)
        print(f"| {name} | {statistics.median(times[key]):.2f} | {', '.join(f'{t:.2f}' for t in times[key])} | "
              f"{files_count(path)} | {mb(size)} | {size / folder_size:.2f} |")  # fmt: skip
    print()
    return lit, tar


def section_read(
    root: Path, lit: Path, tar: Path, rounds: int, images: int, workers: list[int], batch: int
) -> None:
    urls = wds_urls(tar)
    pipelines = ("files", "shards", "shards-item", "webdataset")
    rates: dict[tuple, list[float]] = {}
    firsts: dict[tuple, list[float]] = {}
    for r in range(rounds):
        for w in workers:
            for p in pipelines:
                kind = p.split("-")[0]
                loader = (
                    wds_loader(urls, w, batch, seed=r)
                    if p == "webdataset"
                    else our_loader(kind, root, lit, w, batch, seed=r)
                )
                with per_item_decode(p == "shards-item"):
                    first, rate, _ = timed_read(loader, images)
                rates.setdefault((p, w), []).append(rate)
                firsts.setdefault((p, w), []).append(first)
                del loader
    names = {"files": "our folder path (FileIndex)", "shards": "our shards path (ShardIndex, litdata)",
             "shards-item": "our shards path, LITDATA_BATCH_DECODE=1 (litdata reads one record per index)",
             "webdataset": f"WebDataset ({len(urls)} train shard(s), shuffle 1000)"}  # fmt: skip
    print(header())
    print(f"Read + decode + RandomResizedCrop(224) + flip, batch {batch}, ~{images} images per measurement after the "
          f"first batch; medians of {rounds} alternating round(s).\n")  # fmt: skip
    print("| pipeline | workers | img/s (median) | rounds | first batch (s) | vs folder |")
    print("|---|---|---|---|---|---|")
    for w in workers:
        base = statistics.median(rates[("files", w)])
        for p in pipelines:
            med = statistics.median(rates[(p, w)])
            print(f"| {names[p]} | {w} | {med:.0f} | {', '.join(f'{x:.0f}' for x in rates[(p, w)])} | "
                  f"{statistics.median(firsts[(p, w)]):.2f} | {med / base:.2f} |")  # fmt: skip
    print()


def batches_of(
    loader, count: int, advance: bool = False, keep: bool = False
) -> tuple[list[torch.Tensor], list[torch.Tensor], float]:
    """The loader's first `count` batches (ids, crops) and the seconds they took; `advance`: as the engine does after each one;
    `keep`: leave the loader's workers running (the caller reads its state)."""
    ids, crops = [], []
    start = time.perf_counter()
    it = iter(loader)
    for batch in it:
        ids.append(batch["ids"].clone())
        crops.append(batch["crops"][0].clone())
        if advance:
            loader.advance()
        if len(ids) == count:
            break
    seconds = time.perf_counter() - start
    if hasattr(it, "_shutdown_workers"):
        it._shutdown_workers()
    del it
    if not keep:
        close(loader)
    return ids, crops, seconds


def compare(reference_ids, reference_crops, ids, crops) -> str:
    n = sum(len(x) for x in reference_ids)
    same_position = sum(int((a == b).sum()) for a, b in zip(reference_ids, ids))
    same_set = len(set(torch.cat(reference_ids).tolist()) & set(torch.cat(ids).tolist()))
    exact_crops = all(torch.equal(a, b) for a, b in zip(reference_crops, crops)) and same_position == n
    return f"{same_position}/{n} | {same_set}/{n} | {'yes' if exact_crops else 'no'}"


def section_resume(root: Path, lit: Path, tar: Path, k: int, m: int, batch: int, workers: int) -> None:
    rows, refs = [], {}
    for kind in ("shards", "files"):
        seed = 7
        ref_ids, ref_crops, _ = batches_of(
            our_loader(kind, root, lit, workers, batch, seed), k + m, advance=True
        )
        refs[kind] = (ref_ids, ref_crops)
        interrupted = our_loader(kind, root, lit, workers, batch, seed)
        batches_of(interrupted, k, advance=True, keep=True)
        state = interrupted.state_dict()  # read while its workers still hold prefetched batches beyond k
        close(interrupted)
        resumed = our_loader(kind, root, lit, workers, batch, seed)
        resumed.load_state_dict(state)
        ids, crops, resume_time = batches_of(resumed, m, advance=True)
        label = "our shards path (ShardIndex)" if kind == "shards" else "our folder path (FileIndex)"
        rows.append(f"| {label} | load_state_dict({state}) into a fresh loader | {compare(ref_ids[k:], ref_crops[k:], ids, crops)} | "
                    f"{resume_time:.1f} s for {m} batches |")  # fmt: skip
    rows.append(f"| our shards path vs our folder path | uninterrupted runs, same seed, all {k + m} batches | "
                f"{compare(*refs['files'], *refs['shards'])} | – |")  # fmt: skip
    urls = wds_urls(tar)
    for seed, label in (
        (None, "WebDataset, unseeded shuffles (as usually written)"),
        (11, "WebDataset, every shuffle seeded"),
    ):
        ref_ids, ref_crops, _ = batches_of(wds_loader(urls, workers, batch, seed), k + m)
        ids, crops, seconds = batches_of(wds_loader(urls, workers, batch, seed), m)
        rows.append(f"| {label} | restarted (no state to load) | {compare(ref_ids[k:], ref_crops[k:], ids, crops)} | "
                    f"{seconds:.1f} s for {m} batches |")  # fmt: skip
        starts_over = compare(ref_ids[:m], ref_crops[:m], ids, crops)
        rows.append(
            f"| {label} | (the same restart against the run's first {m} batches) | {starts_over} | – |"
        )
        if seed is not None:
            ids, crops, seconds = batches_of(wds_loader(urls, workers, batch, seed), k + m)
            rows.append(f"| {label} | restarted, first {k} batches read and dropped | "
                        f"{compare(ref_ids[k:], ref_crops[k:], ids[k:], crops[k:])} | "
                        f"{seconds:.1f} s for {k} skipped + {m} batches |")  # fmt: skip
    print(header())
    print(f"Resume after k = {k} batches of {batch} ({workers} workers): the next {m} batches against an uninterrupted "
          f"run's batches k..k+{m - 1}. Same position: ids equal at the same place; same samples: ids in common.\n")  # fmt: skip
    print("| pipeline | how it continues | same position | same samples | identical crops | time |")
    print("|---|---|---|---|---|---|")
    print("\n".join(rows))
    print()


def access_row(kind: str, root: Path, lit: Path, picks: list[int]) -> str:
    index = record_index("folder", root, "train") if kind == "files" else record_index("shards", lit, "train")
    start = time.perf_counter()
    index.read(picks[0], CHANNELS)  # opens litdata's reader (chunks, index.json)
    first = time.perf_counter() - start
    times, raw = [], []
    for i in picks:
        t0 = time.perf_counter()
        index.read(i, CHANNELS)
        times.append(time.perf_counter() - t0)
    for i in picks:
        t0 = time.perf_counter()
        if kind == "files":
            index.path(i).read_bytes()
        else:
            bytes(index._dataset[int(index.rows[i])]["image"])
        raw.append(time.perf_counter() - t0)
    name = {
        "files": "folder (FileIndex.read)",
        "shards": "litdata shards (ShardIndex.read)",
        "shards-item": "litdata shards, LITDATA_BATCH_DECODE=1",
    }[kind]
    return (f"| {name} | {1000 * statistics.mean(times):.2f} | {1000 * statistics.median(times):.2f} | "
            f"{1000 * statistics.mean(raw):.3f} | {1000 * first:.1f} |")  # fmt: skip


def section_access(root: Path, lit: Path, reads: int) -> None:
    rows = []
    n = len(record_index("folder", root, "train"))
    picks = random.Random(0).choices(range(n), k=reads)
    for kind in ("files", "shards", "shards-item"):
        with per_item_decode(kind == "shards-item"):
            rows.append(access_row(kind, root, lit, picks))
    print(header())
    print(
        f"Random access: {reads} random train indices (the same for each index), read + decode in this process.\n"
    )
    print("| index | mean read(i, 3) ms | median ms | mean bytes only ms | first read (opening) ms |")
    print("|---|---|---|---|---|")
    print("\n".join(rows))
    print("| WebDataset tar | n/a: read front to back (random access needs its `wids` variant) | | | |")
    print()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", type=Path, default=Path("/tmp/hybridssl-bench-shards/photos"))
    p.add_argument("--work", type=Path, default=None, help="where the packs go (default: --root's parent)")
    p.add_argument("--images", type=int, default=3000, help="JPEGs generated (train + val)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--read-images", type=int, default=1000, help="images per throughput measurement")
    p.add_argument("--workers", default="1,2")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument(
        "--resume-batches", default="3,3", help="k,m: interrupt after k batches, compare the next m"
    )
    p.add_argument("--reads", type=int, default=200, help="random-access reads")
    p.add_argument("--sections", default="pack,read,resume,access")
    p.add_argument("--quick", action="store_true", help="N=200, 1 round, batch 16: checks the script")
    args = p.parse_args()
    if args.quick:
        args.images, args.rounds, args.read_images, args.batch_size, args.resume_batches = (
            200,
            1,
            100,
            16,
            "2,2",
        )
        if args.root == p.get_default("root"):
            args.root = Path("/tmp/hybridssl-bench-shards-quick/photos")
    work = args.work or args.root.parent
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("HYBRIDSSL_INDEX_DIR", str(work / "index-cache"))
    sections = args.sections.split(",")
    root = photo_folder(args.root, args.images)
    if (
        "pack" in sections
        or not (work / "litdata" / "meta.json").exists()
        or not (work / "wds" / "train").exists()
    ):
        lit, tar = section_pack(root, work, args.rounds)
    else:
        lit, tar = work / "litdata", work / "wds"
    k, m = (int(x) for x in args.resume_batches.split(","))
    if "read" in sections:
        section_read(
            root,
            lit,
            tar,
            args.rounds,
            args.read_images,
            [int(w) for w in args.workers.split(",")],
            args.batch_size,
        )
    if "resume" in sections:
        section_resume(root, lit, tar, k, m, args.batch_size, max(int(w) for w in args.workers.split(",")))
    if "access" in sections:
        section_access(root, lit, args.reads)  # last: it opens litdata's reader in this process


if __name__ == "__main__":
    main()
