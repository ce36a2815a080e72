"""The public face: `hybridssl.load_encoder(...).embed` from every kind of file and input, `export` =
the library's features in timm, `hybridssl embed`, torch.hub, and no Lightning on the way."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import hybridssl
from hybridssl.cli import main
from hybridssl.errors import CheckpointError, ConfigError, DataError

SHIPPED = Path(hybridssl.__file__).parent / "pretrained" / "mae-vit-pico-fashion-mnist.ckpt"  # 28 px, grey, mean-patch
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two classes of 36 px grey images, one planted duplicate (c1/dup.png = c0/000.png)."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for c in range(2):
        (root / f"c{c}").mkdir()
        for i in range(5):
            pixels = (rng.random((36, 40)) * 255 * (0.5 + c / 2)).astype(np.uint8)
            Image.fromarray(pixels).save(root / f"c{c}" / f"{i:03d}.png")
    Image.open(root / "c0" / "000.png").save(root / "c1" / "dup.png")
    return root


def files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*/*.png"))


def test_folder_paths_and_tensor_give_the_same_embeddings(folder: Path) -> None:
    from hybridssl.data.decode import fit, read_image

    encoder = hybridssl.load_encoder(SHIPPED)
    assert (encoder.image_size, encoder.channels, encoder.pooling) == (28, 1, "mean_patch")
    by_folder = encoder.embed(folder, num_workers=0)
    by_paths = encoder.embed([str(p) for p in files(folder)], num_workers=0)
    decoded = torch.stack([fit(read_image(p, 1), 28) for p in files(folder)])
    by_tensor = encoder.embed(decoded, batch_size=4)
    assert by_folder.dtype == np.float32 and by_folder.shape == (11, 128)
    np.testing.assert_allclose(by_folder, by_paths, atol=1e-6)
    np.testing.assert_allclose(by_folder, by_tensor, atol=1e-5)
    emb = encoder.embeddings(folder, num_workers=0)
    assert emb.paths == [str(p) for p in files(folder)] and emb.classes == ["c0", "c1"]
    assert emb.labels.tolist() == [0] * 5 + [1] * 6


def test_embed_is_the_methods_pooling_of_the_normalised_input() -> None:
    """The pooling and normalization are the trained ones: mean of the normed patch tokens, the
    checkpoint's mean/std (a CLS-pooled or unnormalised embedding differs)."""
    encoder = hybridssl.load_encoder(SHIPPED)
    x = torch.randint(0, 256, (3, 1, 28, 28), dtype=torch.uint8)
    mean, std = torch.tensor(encoder.mean).view(1, -1, 1, 1), torch.tensor(encoder.std).view(1, -1, 1, 1)
    with torch.no_grad():
        tokens = encoder.module((x.float() / 255 - mean) / std)
    np.testing.assert_allclose(encoder.embed(x), tokens[:, 1:].mean(1).numpy(), atol=1e-5)


def test_a_tensor_of_another_size_or_dtype_is_one_clear_error() -> None:
    encoder = hybridssl.load_encoder(SHIPPED)
    with pytest.raises(DataError, match=r"N x 1 x 28 x 28"):
        encoder.embed(torch.zeros(2, 1, 32, 32, dtype=torch.uint8))
    with pytest.raises(DataError, match="uint8"):
        encoder.embed(torch.zeros(2, 1, 28, 28))


def test_unreadable_files_are_left_out_and_named(folder: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG not really")
    encoder = hybridssl.load_encoder(SHIPPED)
    with pytest.warns(UserWarning, match="broken.png"):
        emb = encoder.embeddings([*map(str, files(folder)[:2]), str(broken)], num_workers=0)
    assert emb.vectors.shape[0] == 2 and len(emb.skipped) == 1 and "broken.png" in emb.skipped[0]
    with pytest.raises(DataError, match="broken.png"):
        encoder.embed([str(broken)], num_workers=0, strict=True)


def timm_features(path: Path, x: torch.Tensor) -> torch.Tensor:
    """The exported file rebuilt the way its metadata says, applied to normalised uint8 images."""
    import timm
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    cfg = json.loads(meta["pretrained_cfg"])
    model = timm.create_model(meta["timm_model"], pretrained=False, checkpoint_path=str(path), **json.loads(meta["timm_kwargs"])).eval()
    mean, std = torch.tensor(cfg["mean"]).view(1, -1, 1, 1), torch.tensor(cfg["std"]).view(1, -1, 1, 1)
    with torch.no_grad():
        return model((x.float() / 255 - mean) / std)


@pytest.mark.parametrize("pooling", ["mean_patch", "cls"])
def test_export_returns_by_default_what_embed_returns(tmp_path: Path, pooling: str) -> None:
    """timm's default forward of the export is the library's embedding: the method's pooling kept
    (CLS: a timm file without MAE's decoder)."""
    import timm

    source = SHIPPED
    if pooling == "cls":
        source = tmp_path / "timm.pth"
        torch.save(timm.create_model("vit_tiny_patch16_224", num_classes=0, img_size=32, patch_size=8).state_dict(), source)
    out = tmp_path / "encoder.safetensors"
    hybridssl.export_encoder(source, out)
    encoder = hybridssl.load_encoder(source)
    assert encoder.pooling == pooling
    x = torch.randint(0, 256, (4, encoder.channels, encoder.image_size, encoder.image_size), dtype=torch.uint8)
    np.testing.assert_allclose(timm_features(out, x).numpy(), encoder.embed(x), atol=1e-4)
    np.testing.assert_allclose(hybridssl.load_encoder(out).embed(x), encoder.embed(x), atol=1e-5)  # the export reads back


def test_damaged_weights_stop_loading_and_export(tmp_path: Path) -> None:
    from hybridssl.weights.ours import atomic_save, load_checkpoint

    ckpt = load_checkpoint(SHIPPED)
    key = next(k for k in ckpt["state_dict"] if k.startswith("method.encoder.blocks.0.attn.qkv.weight"))
    ckpt["state_dict"][key] = ckpt["state_dict"][key].clone()
    ckpt["state_dict"][key][0, 0] = float("nan")
    atomic_save(ckpt, tmp_path / "nan.ckpt")
    with pytest.raises(CheckpointError, match=r"damaged \(blocks.0.attn.qkv.weight holds NaN"):
        hybridssl.load_encoder(tmp_path / "nan.ckpt")
    assert main(["export", "--checkpoint", str(tmp_path / "nan.ckpt"), "--output", str(tmp_path / "x.safetensors")]) == 2
    assert not (tmp_path / "x.safetensors").exists()


def test_embed_cli_writes_rows_paths_labels_and_conditions(folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["embed", "--checkpoint", str(SHIPPED), "--data-dir", str(folder), "--image-size", "56",
                 "--num-workers", "0", "--output", str(tmp_path / "emb")]) == 0  # fmt: skip
    assert "wrote" in capsys.readouterr().out
    loaded = hybridssl.load_embeddings(tmp_path / "emb.npz")
    with np.load(tmp_path / "emb.npz", allow_pickle=False) as f:  # readable by numpy alone
        assert f["embeddings"].shape == (11, 128) and f["paths"].shape == (11,)
    assert loaded.meta["image_size"] == 56 and loaded.meta["pooling"] == "mean_patch"
    assert loaded.meta["source"]["data_dir"] == str(folder) and loaded.meta["mean"] == list(hybridssl.load_encoder(SHIPPED).mean)
    np.testing.assert_allclose(loaded.vectors, hybridssl.load_encoder(SHIPPED, image_size=56).embed(folder, num_workers=0), atol=1e-6)
    assert loaded.labels.tolist() == [0] * 5 + [1] * 6 and loaded.classes == ["c0", "c1"]


def test_embed_cli_mistakes_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["embed", "--checkpoint", str(SHIPPED), "--data-dir", str(tmp_path / "nowhere"), "--output", str(tmp_path / "e")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["embed", "--checkpoint", str(tmp_path / "none.ckpt"), "--data-dir", str(tmp_path), "--output", str(tmp_path / "e")]) == 2
    assert main(["embed", "--checkpoint", str(SHIPPED), "--output", str(tmp_path / "e")]) == 2
    assert "data_dir" in capsys.readouterr().err


def test_nearest_and_near_duplicates_match_brute_force(folder: Path) -> None:
    emb = hybridssl.load_encoder(SHIPPED).embeddings(folder, num_workers=0)
    x = emb.vectors / np.linalg.norm(emb.vectors, axis=1, keepdims=True)
    sims = x @ x.T
    np.fill_diagonal(sims, -np.inf)
    got_sims, got_idx = hybridssl.nearest(emb.vectors, emb.vectors, 3, exclude=np.arange(len(x)))
    np.testing.assert_allclose(got_sims, np.sort(sims, axis=1)[:, ::-1][:, :3], atol=1e-5)  # the 3 most similar ...
    np.testing.assert_allclose(np.take_along_axis(sims, got_idx, 1), got_sims, atol=1e-5)  # ... are the rows named (ties: 000 = dup)
    (i, j, s), *_ = hybridssl.near_duplicates(emb.vectors, 2)
    assert {Path(emb.paths[i]).name, Path(emb.paths[j]).name} == {"000.png", "dup.png"} and s > 0.9999


def test_build_method_validates_like_the_cli() -> None:
    method = hybridssl.build_method("mae", model="vit-pico", image_size=28, channels=1, mask_ratio=0.6)
    assert isinstance(method, hybridssl.Method) and method.cfg.mask_ratio == 0.6
    with pytest.raises(ConfigError, match="method_args.mask_ratio"):
        hybridssl.build_method("mae", mask_ratio=2.0)
    with pytest.raises(ConfigError, match="multi-stage recipe.*mae-ct-tune"):
        hybridssl.build_method("mae-ct")
    with pytest.raises(ConfigError, match="unknown 'nope'"):
        hybridssl.build_method("nope")


def test_importing_and_embedding_do_not_import_lightning(folder: Path) -> None:
    code = ("import sys, hybridssl; e = hybridssl.load_encoder(sys.argv[1]); e.embed(sys.argv[2], num_workers=0); "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('lightning', 'pytorch_lightning')]; assert not bad, bad")  # fmt: skip
    subprocess.run([sys.executable, "-c", code, str(SHIPPED), str(folder)], check=True, capture_output=True, timeout=300)


def test_torch_hub_gives_the_same_encoder(folder: Path) -> None:
    hub = torch.hub.load(str(ROOT), "encoder", source="local", checkpoint=str(SHIPPED), trust_repo=True)
    np.testing.assert_array_equal(hub.embed(folder, num_workers=0), hybridssl.load_encoder(SHIPPED).embed(folder, num_workers=0))


def test_normalization_and_pooling_can_be_overridden(capsys: pytest.CaptureFixture) -> None:
    """A released file without a record gets its format's default; a user who knows better says so."""
    encoder = hybridssl.load_encoder(SHIPPED, mean=(0.5,), std=(0.25,), pooling="cls")
    assert (encoder.mean, encoder.std, encoder.pooling) == ((0.5,), (0.25,), "cls")
    x = torch.randint(0, 256, (2, 1, 28, 28), dtype=torch.uint8)
    with torch.no_grad():
        tokens = encoder.module((x.float() / 255 - 0.5) / 0.25)
    np.testing.assert_allclose(encoder.embed(x), tokens[:, 0].numpy(), atol=1e-5)
    with pytest.raises(ConfigError, match="1-channel images"):
        hybridssl.load_encoder(SHIPPED, mean=(0.5, 0.5, 0.5), std=(0.2, 0.2, 0.2))
    with pytest.raises(ConfigError, match="both or neither"):
        hybridssl.load_encoder(SHIPPED, mean=(0.5,))


def test_every_public_name_resolves_with_a_docstring() -> None:
    code = "import sys, hybridssl; assert 'torch' not in sys.modules, 'import hybridssl must stay light'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    for name in hybridssl.__all__:
        value = getattr(hybridssl, name)
        assert name == "__version__" or name == "METHODS" or (value.__doc__ or "").strip(), f"{name} has no docstring"


def test_review_findings_are_one_line_or_right(folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """An export timm could not read (no .safetensors suffix) is refused; embeddings carry their source
    (the neighbour page reads thumbnails by it); one query vector is one row; std 0 is refused."""
    from hybridssl.embedding.sources import embed_source

    assert main(["export", "--checkpoint", str(SHIPPED), "--output", str(tmp_path / "encoder")]) == 2
    assert "must end in .safetensors" in capsys.readouterr().err and not (tmp_path / "encoder").exists()
    emb, source = embed_source(hybridssl.load_encoder(SHIPPED), None, folder, num_workers=0, progress=False)
    assert emb.meta["source"] == source and source["data_dir"] == str(folder)
    sims, idx = hybridssl.nearest(emb.vectors[0], emb.vectors, 2)
    assert sims.shape == (1, 2) and sims[0, 0] > 0.9999  # itself or its planted duplicate
    with pytest.raises(ConfigError, match="std > 0"):
        hybridssl.build_method("mae", std=(0.0,))
