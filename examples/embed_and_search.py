"""Embeddings of a folder of images with a trained encoder, then search: nearest neighbours and
near-duplicates.

What it shows:
- `hybridssl.load_encoder(path)` reads a checkpoint (here the tiny MAE shipped in the package, a
  ViT-pico trained on Fashion-MNIST at 28 px, found with importlib.resources) and knows its input
  size, normalization and pooling; `encoder.embeddings(folder)` resizes and centre-crops any images
  and returns the vectors with each row's file and class (from the class folders);
- `hybridssl.nearest(queries, bank, k, exclude=...)`: cosine nearest neighbours, here every image
  against all the others (exclude = itself), scored by how often a neighbour shares its class;
- `hybridssl.near_duplicates(vectors, pairs)`: the most similar pairs of distinct rows; one planted
  near-copy (the same image re-encoded as a JPEG) comes out as the top pair.

Run it with `python examples/embed_and_search.py` (seconds on a CPU, no downloads).
"""

from __future__ import annotations

import tempfile
from importlib.resources import as_file, files
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

import hybridssl

SHAPES = ("disc", "bar", "column", "frame")


def draw(shape: str, rng: np.random.Generator, size: int = 40) -> Image.Image:
    """One greyscale image: a shape of random size and place on a noisy dark background."""
    image = Image.fromarray(rng.integers(0, 50, size=(size, size), dtype=np.uint8))
    pen = ImageDraw.Draw(image)
    r = int(rng.integers(8, 14))
    x, y = (int(v) for v in rng.integers(r + 2, size - r - 2, size=2))
    fill = int(rng.integers(180, 255))
    if shape == "disc":
        pen.ellipse((x - r, y - r, x + r, y + r), fill=fill)
    elif shape == "bar":
        pen.rectangle((x - 2 * r, y - r // 3, x + 2 * r, y + r // 3), fill=fill)
    elif shape == "column":
        pen.rectangle((x - r // 3, y - 2 * r, x + r // 3, y + 2 * r), fill=fill)
    else:
        pen.rectangle((x - r, y - r, x + r, y + r), outline=fill, width=3)
    return image


def write_folder(root: Path, per_class: int = 20, seed: int = 0) -> Path:
    """root/<shape>/<i>.png, plus one near-copy of disc/0003.png saved as disc/copy-of-0003.jpg."""
    rng = np.random.default_rng(seed)
    for shape in SHAPES:
        (root / shape).mkdir(parents=True)
        for i in range(per_class):
            draw(shape, rng).save(root / shape / f"{i:04d}.png")
    Image.open(root / "disc" / "0003.png").save(root / "disc" / "copy-of-0003.jpg", quality=90)  # lossy: not the same pixels
    return root


def main() -> None:
    shipped = files("hybridssl") / "pretrained" / "mae-vit-pico-fashion-mnist.ckpt"  # inside the installed package
    with tempfile.TemporaryDirectory() as tmp, as_file(shipped) as checkpoint:
        folder = write_folder(Path(tmp) / "shapes")
        encoder = hybridssl.load_encoder(checkpoint, device="cpu")
        print(f"encoder: {encoder.method}, {encoder.image_size} px, {encoder.channels} channel(s), "
              f"{encoder.pooling} pooling, {encoder.dim}-d")
        found = encoder.embeddings(folder, num_workers=0)
        names = [str(Path(p).relative_to(folder)) for p in found.paths]
        print(f"embedded {len(found.vectors)} images in {len(found.classes)} classes: {', '.join(found.classes)}")

        # every image against all the others: how many of its 5 neighbours share its class
        rows = np.arange(len(found.vectors))
        sims, idx = hybridssl.nearest(found.vectors, found.vectors, k=5, exclude=rows)
        agreement = (found.labels[idx] == found.labels[:, None]).mean()
        print(f"5 nearest neighbours in the same class: {100 * agreement:.0f}% (chance: {100 / len(found.classes):.0f}%)")
        query = names.index("frame/0000.png")
        print(f"nearest to {names[query]}: " + ", ".join(f"{names[j]} ({s:.3f})" for s, j in zip(sims[query], idx[query], strict=True)))

        pairs = hybridssl.near_duplicates(found.vectors, pairs=3)
        for i, j, s in pairs:
            print(f"near-duplicates: {names[i]} ~ {names[j]} (cosine {s:.4f})")
        top = {names[pairs[0][0]], names[pairs[0][1]]}
        assert top == {"disc/0003.png", "disc/copy-of-0003.jpg"}, f"the planted copy is not the top pair: {top}"
        print("the planted near-copy is the top pair")


if __name__ == "__main__":
    main()
