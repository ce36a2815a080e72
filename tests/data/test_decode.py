"""Decoding: damaged files are errors, never crashes; both data paths give the same pixels (transparency,
palettes, 16-bit by bit depth, JPEG); a size limit read from the header; the intensity window."""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hybridssl.data.decode import ImageTooLarge, decode_bytes, decode_image, fit, jpeg_header, read_image, verify_bytes
from hybridssl.errors import DataError

SIZE = 16


def png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    chunks, pos = [], 8
    while pos + 8 <= len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        chunks.append((data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]))
        pos += 12 + length
    return chunks


def png_from_chunks(chunks: list[tuple[bytes, bytes]]) -> bytes:
    body = b"".join(struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF) for t, d in chunks)
    return b"\x89PNG\r\n\x1a\n" + body


def damaged_pngs(good: bytes) -> dict[str, bytes]:
    """Short and corrupted variants of a valid PNG: cut at several lengths, and IDAT bytes flipped with
    the chunk's checksum left wrong or recomputed (the second passes PIL's verify())."""
    idat = good.find(b"IDAT") + 4
    out = {f"cut{n}": good[:n] for n in (8, 33, 50, 100, len(good) // 2, len(good) * 9 // 10)}  # all inside the pixels
    for offset in (2, 40, 400):
        flipped = bytearray(good)
        for k in range(idat + offset, idat + offset + 16):
            flipped[k] ^= 0x5A
        out[f"flip{offset}"] = bytes(flipped)
        out[f"flip{offset}-crc"] = png_from_chunks(png_chunks(bytes(flipped)))
    return out


def photo(height: int = 48, width: int = 64, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)


def test_damaged_pngs_are_errors_on_every_decoder_never_a_crash(tmp_path):
    """torchvision's PNG decoder segfaults on corrupt image data (measured: rc -11 for every flipped
    IDAT, checksum fixed or not): every path must raise instead. Run in a child so a crash fails here."""
    buffer = io.BytesIO()
    Image.fromarray(photo(96, 128)).save(buffer, "PNG")
    names = []
    for name, data in damaged_pngs(buffer.getvalue()).items():
        (tmp_path / f"{name}.png").write_bytes(data)
        names.append(name)
    script = f"""
import json, sys
from pathlib import Path
from hybridssl.data.decode import decode_bytes, decode_image, read_image, verify_bytes
out = {{}}
for name in {names!r}:
    path = Path({str(tmp_path)!r}) / (name + ".png")
    for label, call in (("read_image", lambda: read_image(path, 3)), ("decode_bytes", lambda: decode_bytes(path.read_bytes(), 3)),
                        ("decode_image", lambda: decode_image(path, 16, 3)), ("verify_bytes", lambda: verify_bytes(path.read_bytes()))):
        try:
            call()
            out[name + " " + label] = "decoded"
        except Exception as exc:
            out[name + " " + label] = type(exc).__name__
print(json.dumps(out))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"the decoder crashed the process (rc {done.returncode}): {done.stderr[-500:]}"
    outcomes = json.loads(done.stdout)
    assert len(outcomes) == 4 * len(names)
    assert all(v != "decoded" for v in outcomes.values()), outcomes


def rgba_with_transparent_pixels() -> Image.Image:
    pixels = np.dstack([photo(SIZE, SIZE, 1), np.full((SIZE, SIZE), 255, dtype=np.uint8)])
    pixels[:6, :6] = (255, 255, 255, 0)  # fully transparent, stored white: torchvision's RGB gave 255
    pixels[8:, 8:, 3] = 100  # half transparent
    return Image.fromarray(pixels, "RGBA")


def palette_with_transparency() -> Image.Image:
    image = Image.fromarray(photo(SIZE, SIZE, 2)).quantize(16)
    image.info["transparency"] = int(np.asarray(image)[0, 0])
    return image


def write_kinds(folder: Path) -> dict[str, Path]:
    """The kinds of file the two paths must agree on, each already at the target size (and a JPEG whose
    EXIF orientation turns it)."""
    folder.mkdir(parents=True, exist_ok=True)
    exif = Image.Exif()
    exif[0x0112] = 6
    grey16 = np.random.default_rng(3).integers(0, 65536, (SIZE, SIZE)).astype(np.uint16)
    files = {
        "rgb.png": (Image.fromarray(photo(SIZE, SIZE)), {}),
        "rgba.png": (rgba_with_transparent_pixels(), {}),
        "palette.png": (palette_with_transparency(), {"transparency": palette_with_transparency().info["transparency"]}),
        "grey16.png": (Image.fromarray(grey16), {}),
        "photo.jpg": (Image.fromarray(photo(SIZE, SIZE, 4)), {"quality": 90}),
        "rotated.jpg": (Image.fromarray(photo(SIZE, SIZE, 5)), {"exif": exif.tobytes()}),
    }
    for name, (image, options) in files.items():
        image.save(folder / name, **options)
    return {name: folder / name for name in files}


@pytest.mark.parametrize("channels", [3, 1])
def test_the_streamed_and_in_memory_paths_give_identical_pixels(tmp_path, channels):
    """Where the resize is the identity (the file is already size x size; PIL's and torchvision's bicubic
    resamplers legitimately differ otherwise), read_image + fit, decode_bytes (shards) and decode_image
    give the same bytes."""
    for name, path in write_kinds(tmp_path).items():
        streamed = fit(read_image(path, channels), SIZE)
        stored = decode_image(path, SIZE, channels)
        packed = fit(decode_bytes(path.read_bytes(), channels), SIZE)
        assert streamed.shape == (channels, SIZE, SIZE)
        assert torch.equal(streamed, stored), f"{name}: streamed and in-memory differ by {(streamed.int() - stored.int()).abs().max()}"
        assert torch.equal(streamed, packed), name


def test_transparency_is_composited_on_black_on_every_path(tmp_path):
    files = write_kinds(tmp_path)
    for decoded in (read_image(files["rgba.png"], 3), decode_image(files["rgba.png"], SIZE, 3)):
        assert decoded[:, :6, :6].eq(0).all(), "a fully transparent pixel is black, whatever colour it stored"
        expected = torch.from_numpy(photo(SIZE, SIZE, 1)[8:, 8:].astype(np.int32) * 100 / 255).round().permute(2, 0, 1)
        assert (decoded[:, 8:, 8:].int() - expected).abs().max() <= 1, "half transparent: colour x opacity"
    palette = files["palette.png"]
    key = int(np.asarray(Image.open(palette))[0, 0])
    transparent = torch.from_numpy(np.asarray(Image.open(palette)) == key)
    for decoded in (read_image(palette, 3), decode_image(palette, SIZE, 3)):
        assert decoded[:, transparent].eq(0).all()


def test_16_bit_images_are_scaled_by_bit_depth_not_stretched_per_image(tmp_path):
    """A constant 16-bit image used to turn black (min-max stretch) and a dim one bright: intensity is
    absolute, x / 65535 x 255, the same for every image."""
    for name, value in (("constant.png", 40000), ("dim.png", 1000)):
        Image.fromarray(np.full((SIZE, SIZE), value, dtype=np.uint16)).save(tmp_path / name)
    ramp = np.linspace(0, 65535, SIZE * SIZE).reshape(SIZE, SIZE).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "ramp.png")
    Image.fromarray(np.full((SIZE, SIZE), 40000, dtype=np.uint16)).save(tmp_path / "constant.tif")
    Image.fromarray(np.linspace(-0.5, 1.5, SIZE * SIZE, dtype=np.float32).reshape(SIZE, SIZE)).save(tmp_path / "float.tif")
    for read in (lambda p: read_image(p, 1), lambda p: decode_image(p, SIZE, 1)):
        assert read(tmp_path / "constant.png").eq(round(40000 / 257)).all()  # 156, not 0
        assert read(tmp_path / "constant.tif").eq(156).all()
        assert read(tmp_path / "dim.png").eq(round(1000 / 257)).all()  # 4, not stretched to 255
        assert torch.equal(read(tmp_path / "ramp.png")[0], torch.from_numpy(np.rint(ramp / 257).astype(np.uint8)))
        floats = read(tmp_path / "float.tif")[0].flatten()
        assert floats[0] == 0 and floats[-1] == 255 and floats[SIZE * SIZE // 2] == 128, "float: clipped to [0, 1] x 255"


def test_a_fixed_intensity_window_maps_lo_hi_to_the_8_bit_range(tmp_path, monkeypatch):
    values = np.tile(np.array([0, 1000, 2000, 3000, 4095, 8000], dtype=np.uint16), (6, 1))  # 6 x 6: fit is the identity
    Image.fromarray(values).save(tmp_path / "scan.png")
    Image.fromarray(np.full((2, 6, 3), 77, dtype=np.uint8)).save(tmp_path / "rgb.png")
    monkeypatch.setenv("HYBRIDSSL_INTENSITY_WINDOW", "1000,3000")
    assert read_image(tmp_path / "scan.png", 1)[0, 0].tolist() == [0, 0, 128, 255, 255, 255]
    assert read_image(tmp_path / "rgb.png", 3).eq(77).all(), "8-bit images are never windowed"
    monkeypatch.setenv("HYBRIDSSL_INTENSITY_WINDOW", "0,4095")
    assert decode_image(tmp_path / "scan.png", 6, 1)[0, 2].tolist() == [0, 62, 125, 187, 255, 255]
    monkeypatch.setenv("HYBRIDSSL_INTENSITY_WINDOW", "3000,1000")
    with pytest.raises(DataError, match="HYBRIDSSL_INTENSITY_WINDOW"):
        read_image(tmp_path / "scan.png", 1)


def jpeg_declaring(width: int, height: int) -> bytes:
    """A small valid JPEG whose frame header is rewritten to declare width x height."""
    buffer = io.BytesIO()
    Image.fromarray(photo(16, 16)).save(buffer, "JPEG")
    data = bytearray(buffer.getvalue())
    sof = data.find(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def png_declaring(width: int, height: int) -> bytes:
    """A few hundred bytes of PNG whose header declares width x height (decoded whole: 3 x w x h bytes)."""
    raw = zlib.compress(b"\x00" * (width * 3 + 1) * 2, 9)
    return png_from_chunks([(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)), (b"IDAT", raw), (b"IEND", b"")])


def test_an_image_over_the_pixel_limit_is_refused_from_its_header(tmp_path, monkeypatch):
    """A 30000 x 30000 PNG of a few hundred bytes was decoded whole (2.7 GB per worker): the header's size
    is checked first, on every decoder, and the error names the size."""
    (tmp_path / "bomb.png").write_bytes(png_declaring(30000, 30000))
    (tmp_path / "bomb.jpg").write_bytes(jpeg_declaring(30000, 30000))
    for path in (tmp_path / "bomb.png", tmp_path / "bomb.jpg"):
        for call in (lambda: read_image(path, 3), lambda: decode_image(path, SIZE, 3), lambda: decode_bytes(path.read_bytes(), 3),
                     lambda: verify_bytes(path.read_bytes())):  # fmt: skip
            start = time.perf_counter()
            with pytest.raises(ImageTooLarge, match="30000 x 30000 = 900,000,000 pixels, over the limit of 178,956,970"):
                call()
            assert time.perf_counter() - start < 1.0, "refused before decoding"
    Image.fromarray(photo(100, 200)).save(tmp_path / "photo.png")
    Image.fromarray(photo(100, 200)).save(tmp_path / "photo.jpg")
    monkeypatch.setenv("HYBRIDSSL_MAX_IMAGE_PIXELS", "10000")
    for path in (tmp_path / "photo.png", tmp_path / "photo.jpg"):
        with pytest.raises(ImageTooLarge, match="200 x 100 = 20,000 pixels, over the limit of 10,000"):
            read_image(path, 3)
        with pytest.raises(ImageTooLarge, match="200 x 100"):
            decode_image(path, SIZE, 3)
    monkeypatch.setenv("HYBRIDSSL_MAX_IMAGE_PIXELS", "0")  # no limit
    assert read_image(tmp_path / "photo.png", 3).shape == (3, 100, 200)
    monkeypatch.setenv("HYBRIDSSL_MAX_IMAGE_PIXELS", "lots")
    with pytest.raises(DataError, match="HYBRIDSSL_MAX_IMAGE_PIXELS"):
        read_image(tmp_path / "photo.png", 3)


def test_the_jpeg_header_reader_agrees_with_pil(tmp_path):
    image = Image.fromarray(photo(37, 53))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated: the header keeps the stored size
    for options in ({}, {"progressive": True}, {"exif": exif.tobytes()}, {"quality": 50, "subsampling": 0}):
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", **options)
        assert jpeg_header(buffer.getvalue()) == (53, 37, 3), options
    buffer = io.BytesIO()
    image.convert("L").save(buffer, "JPEG")
    assert jpeg_header(buffer.getvalue()) == (53, 37, 1)
    assert jpeg_header(b"\xff\xd8\xff\xe0\x00") is None and jpeg_header(b"") is None
