"""Encoders published by other libraries, read safely and renamed to ours.

Formats, told apart by the file's contents (never its name):
- the official MAE release: a `{"model": state_dict}` file with the names of MAE's `models_mae.py` (timm's ViT
  names for the encoder; `mask_token`, `decoder_embed`, `decoder_pos_embed`, `decoder_blocks.N`,
  `decoder_norm`, `decoder_pred` for the decoder);
- the official DINOv2 release (`dinov2_vit{s,b,l}14[_reg4]_pretrain.pth`): a plain state dict with timm's
  block names plus layer scale (`ls1.gamma`), `register_tokens` (reg variants) and `mask_token`; its
  `pos_embed` holds the CLS position and 37 x 37 patch positions (518 px / 14), the layout of our ViT;
- timm ViT state dicts, saved with torch or as `.safetensors` (timm's, and our own `export`), with
  layer scale and register tokens (`reg_token`) when the model has them (timm's DINOv2 models); a
  `no_embed_class` table (no CLS row: DeiT III, DINOv2 with registers) gets a zero CLS row
  (nn/vit.with_cls_position_row);
- mmpretrain / MMSelfSup checkpoints: `state_dict` with `backbone.` (the ViT, mmpretrain's layer names:
  `layers.N.ln1`, `ffn.layers.0.0`, ...), `neck.` (MAE's decoder, or a projector) and `head.`.

Nothing is executed: torch files load with weights_only=True and safetensors hold tensors only.
Every name is mapped explicitly onto timm's ViT names (which our ViT uses, nn/vit.py) and MAE's
decoder names onto our TokenDecoder (nn/decoders.py). An entry that maps to nothing is a one-line
error naming it (registers with positions, a SwiGLU MLP, a fine-tuned model's fc_norm: our ViT would
compute something else), unless it belongs to a part left out on purpose (classifier heads, non-MAE
necks, momentum copies, DINOv2's mask token), which the caller reports. The architecture is read from
the tensor shapes.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from torch import Tensor

from hybridssl.weights.reading import is_safetensors
from hybridssl.errors import CheckpointError
from hybridssl.nn.vit import with_cls_position_row

# ImageNet's statistics (the official MAE, mmpretrain) and timm's ViT default: see FORMAT_NORMALIZATION.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TIMM_VIT_MEAN = (0.5, 0.5, 0.5)
TIMM_VIT_STD = (0.5, 0.5, 0.5)

# the parameters of one timm ViT block (also MAE's decoder blocks), in timm's names
BLOCK_PARAMS = ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2")
ENCODER_TOP = ("cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias", "norm.weight", "norm.bias")
BLOCK_KEY = re.compile(r"(decoder_)?blocks\.(\d+)\.(norm1|attn\.qkv|attn\.proj|norm2|mlp\.fc1|mlp\.fc2)\.(weight|bias)")
LAYER_SCALE_KEY = re.compile(r"blocks\.(\d+)\.(ls1|ls2)\.gamma")  # timm's and DINOv2's (encoder blocks only)

# official MAE decoder names -> our TokenDecoder's
DECODER_NAMES = {"mask_token": "mask_token", "decoder_pos_embed": "pos_embed", "decoder_embed.": "embed.",
                 "decoder_blocks.": "blocks.", "decoder_norm.": "norm.", "decoder_pred.": "head."}  # fmt: skip

# mmpretrain's names -> timm's, inside one block (older MMSelfSup necks used timm's blocks: kept as is)
MMPRETRAIN_BLOCK = {"ln1.": "norm1.", "norm1.": "norm1.", "ln2.": "norm2.", "norm2.": "norm2.", "attn.qkv.": "attn.qkv.",
                    "attn.proj.": "attn.proj.", "ffn.layers.0.0.": "mlp.fc1.", "ffn.layers.1.": "mlp.fc2.",
                    "mlp.fc1.": "mlp.fc1.", "mlp.fc2.": "mlp.fc2."}  # fmt: skip
MMPRETRAIN_BACKBONE = {"cls_token": "cls_token", "pos_embed": "pos_embed", "patch_embed.projection.": "patch_embed.proj.",
                       "ln1.": "norm.", "norm1.": "norm."}  # fmt: skip
MMPRETRAIN_NECK = {"mask_token": "mask_token", "decoder_pos_embed": "decoder_pos_embed", "decoder_embed.": "decoder_embed.",
                   "decoder_pred.": "decoder_pred.", "ln1.": "decoder_norm.", "decoder_norm.": "decoder_norm."}  # fmt: skip

# parts of a file that are not the encoder and are left out on purpose (the caller says so)
LEFT_OUT = {"head": "classifier head", "head_dist": "distillation head", "neck": "neck", "heads": "heads",
            "momentum_encoder": "momentum encoder", "target_generator": "target generator",
            "data_preprocessor": "preprocessor",
            "mask_token": "mask token (DINOv2's, for its masked-patch loss: not part of the encoder)"}  # fmt: skip
LEFT_OUT_TENSORS = {"mask_token"}  # single tensors among LEFT_OUT (named without `.*`)

# entries that make a ViT compute something ours does not, and what they are
UNSUPPORTED = {"gamma1": "layer scale in BEiT's / mmpretrain's layout (timm's ls1/ls2.gamma are read)",
               "gamma2": "layer scale in BEiT's / mmpretrain's layout (timm's ls1/ls2.gamma are read)",
               "w12": "a SwiGLU MLP (DINOv2's ViT-g)", "w3": "a SwiGLU MLP (DINOv2's ViT-g)",
               "dist_token": "a distillation token (DeiT)", "norm_pre": "a pre-norm",
               "pre_norm": "a pre-norm (CLIP-style)", "q_norm": "qk-norm", "k_norm": "qk-norm",
               "fc_norm": "no final norm but an fc_norm after pooling (a fine-tuned model; start from the pretrained one)",
               "attn_pool": "attention pooling", "q_bias": "separate q/v biases (BEiT-style)"}  # fmt: skip


@dataclass(frozen=True)
class Architecture:
    """A plain ViT as its tensors describe it (num_heads is not in the weights: see weights/start.py)."""

    embed_dim: int
    depth: int
    patch_size: int
    in_chans: int
    grid_size: int
    mlp_ratio: float
    num_heads: int | None = None  # only where metadata says (our exports): heads are not in the weights
    layer_scale: bool = False  # ls1/ls2.gamma in every block
    reg_tokens: int = 0  # register tokens (no positions)

    @property
    def image_size(self) -> int:
        return self.grid_size * self.patch_size


@dataclass(frozen=True)
class Normalization:
    mean: tuple[float, ...]
    std: tuple[float, ...]
    source: str  # where the numbers come from, for the log line


@dataclass(frozen=True)
class ForeignCheckpoint:
    path: Path
    kind: str  # "official MAE", "official DINOv2", "timm", "timm safetensors", "hybridssl export", "mmpretrain"
    encoder: dict[str, Tensor]  # timm's (= our ViT's) names
    decoder: dict[str, Tensor]  # our TokenDecoder's names; empty when the file has no MAE decoder
    left_out: tuple[str, ...]  # parts of the file not imported, named for the log line
    architecture: Architecture
    normalization: Normalization
    metadata: dict[str, str]  # safetensors metadata ({} for torch files)

    @property
    def masked_pretraining(self) -> bool:
        """An MAE's encoder (official format without a classifier, or with MAE's decoder): evaluated
        with mean-patch pooling like our MAE; other files with the CLS token (timm's default)."""
        mae_release = self.kind == "official MAE" and not any("classifier" in part for part in self.left_out)
        return bool(self.decoder) or mae_release

    def decoder_shape(self) -> tuple[int, int, float] | None:
        return decoder_shape(self.decoder)


def decoder_shape(decoder: dict[str, Tensor]) -> tuple[int, int, float] | None:
    """(width, blocks, MLP ratio) of a TokenDecoder's entries (our names), None without them."""
    if "embed.weight" not in decoder:
        return None
    width = decoder["embed.weight"].shape[0]
    depth = len({k.split(".")[1] for k in decoder if k.startswith("blocks.")})
    hidden = decoder["blocks.0.mlp.fc1.weight"].shape[0] if depth else 4 * width
    return int(width), depth, hidden / width


def flat_tensors(contents: Any, path: Path) -> tuple[str, dict[str, Tensor]]:
    """(container, name -> tensor): the `model` or `state_dict` entry when there is one, else the file."""
    if not isinstance(contents, dict):
        raise CheckpointError(f"{path} holds a {type(contents).__name__}, not a state dict")
    container = next((k for k in ("model", "state_dict") if isinstance(contents.get(k), dict)), "")
    tree = contents[container] if container else contents
    tensors = {str(k): v for k, v in tree.items() if isinstance(v, Tensor)}
    if tensors and all(k.startswith("module.") for k in tensors):  # saved from a DDP wrapper
        tensors = {k.removeprefix("module."): v for k, v in tensors.items()}
    return container, tensors


def renamed(name: str, table: dict[str, str]) -> str | None:
    """`name` with the first matching prefix of `table` replaced; None when none matches."""
    for old, new in table.items():
        if name == old or (old.endswith(".") and name.startswith(old)):
            return new + name[len(old) :]
    return None


def mmpretrain_block(rest: str) -> str | None:
    """`N.<mmpretrain block name>` -> `N.<timm block name>`."""
    index, _, name = rest.partition(".")
    new = renamed(name, MMPRETRAIN_BLOCK)
    return f"{index}.{new}" if index.isdigit() and new else None


def from_mmpretrain(state: dict[str, Tensor], path: Path) -> tuple[dict[str, Tensor], list[str]]:
    """mmpretrain names -> timm/MAE names; returns the renamed entries and the left-out groups. The
    neck is kept when it is MAE's decoder (it has `decoder_embed`), else left out."""
    out, left = {}, []
    mae_neck = "neck.decoder_embed.weight" in state
    for key, value in state.items():
        group, _, rest = key.partition(".")
        if group == "backbone":
            block = rest.startswith("layers.") and mmpretrain_block(rest.removeprefix("layers."))
            new = f"blocks.{block}" if block else renamed(rest, MMPRETRAIN_BACKBONE)
        elif group == "neck" and mae_neck:
            block = rest.startswith("decoder_blocks.") and mmpretrain_block(rest.removeprefix("decoder_blocks."))
            new = f"decoder_blocks.{block}" if block else renamed(rest, MMPRETRAIN_NECK)
        else:
            left.append(group)
            continue
        if new is None:
            raise CheckpointError(unsupported(path, key, rest))
        out[new] = value
    return out, left


def is_dinov2_release(container: str, state: dict[str, Tensor]) -> bool:
    """The official DINOv2 layout: a plain state dict with `register_tokens`, or with a `mask_token`
    and no MAE decoder (the official MAE's files are `{"model": ...}` and have a decoder)."""
    if container:
        return False
    return "register_tokens" in state or ("mask_token" in state and not any(k.startswith("decoder_") for k in state))


def from_dinov2(state: dict[str, Tensor]) -> tuple[dict[str, Tensor], list[str]]:
    """DINOv2's names -> timm's: `register_tokens` is `reg_token`; the mask token (only its training
    loss reads it) is left out. Its position table (CLS row + grid) is already our layout."""
    out = {("reg_token" if k == "register_tokens" else k): v for k, v in state.items() if k != "mask_token"}
    return out, ["mask_token"] if "mask_token" in state else []


def unsupported(path: Path, key: str, name: str) -> str:
    """The one line for an entry with no counterpart in our ViT, saying what it is when known."""
    what = next((v for k, v in UNSUPPORTED.items() if k in name.split(".")), None)
    reason = f": {what}, which our ViT does not have" if what else " in our ViT or MAE decoder"
    return f"{path}: entry {key!r} has no counterpart{reason}"


def split_parts(state: dict[str, Tensor], path: Path) -> tuple[dict[str, Tensor], dict[str, Tensor], list[str]]:
    """timm/MAE-named entries -> (encoder, decoder in our names, left-out groups)."""
    encoder, decoder, left = {}, {}, []
    for key, value in state.items():
        block = BLOCK_KEY.fullmatch(key)
        if key in ENCODER_TOP or key == "reg_token" or (block and not block.group(1)) or LAYER_SCALE_KEY.fullmatch(key):
            encoder[key] = value
        elif renamed(key, DECODER_NAMES) is not None and (block or not key.startswith("decoder_blocks.")):
            decoder[renamed(key, DECODER_NAMES)] = value  # type: ignore[index]
        elif key.split(".")[0] in LEFT_OUT:
            left.append(key.split(".")[0])
        else:
            raise CheckpointError(unsupported(path, key, key))
    return encoder, decoder, left


def complete_decoder(decoder: dict[str, Tensor]) -> bool:
    """Whether the MAE decoder entries hold every part of a TokenDecoder (a lone mask_token is not one)."""
    top = ("embed.weight", "embed.bias", "mask_token", "pos_embed", "norm.weight", "norm.bias", "head.weight", "head.bias")
    depth = len({k.split(".")[1] for k in decoder if k.startswith("blocks.")})
    blocks = (f"blocks.{i}.{p}.{s}" for i in range(depth) for p in BLOCK_PARAMS for s in ("weight", "bias"))
    return all(k in decoder for k in (*top, *blocks))


def require(state: dict[str, Tensor], key: str, path: Path, what: str = "") -> Tensor:
    if key not in state:
        raise CheckpointError(f"{path}: no {key!r} entry{what}; not a plain ViT encoder")
    return state[key]


def block_index(key: str) -> int:
    """The block number of an encoder block entry (split_parts keeps only those under `blocks.`)."""
    return int(key.split(".")[1])


def read_registers(encoder: dict[str, Tensor], width: int, path: Path) -> int:
    """The number of register tokens (`reg_token`, 1 x R x width), 0 without them."""
    if "reg_token" not in encoder:
        return 0
    shape = tuple(encoder["reg_token"].shape)
    if len(shape) != 3 or shape[0] != 1 or shape[2] != width:
        raise CheckpointError(f"{path}: reg_token is {shape}, not 1 x registers x {width}")
    return shape[1]


def read_architecture(encoder: dict[str, Tensor], path: Path) -> Architecture:
    """The ViT the encoder entries describe; every entry of that ViT must be there (layer scale in
    every block or none)."""
    weight = require(encoder, "patch_embed.proj.weight", path)
    if weight.dim() != 4 or weight.shape[2] != weight.shape[3]:
        raise CheckpointError(f"patch_size: {path}: the patch embedding {tuple(weight.shape)} is not a square convolution")
    width, chans, patch = weight.shape[0], weight.shape[1], weight.shape[2]
    depth = len({block_index(k) for k in encoder if k.startswith("blocks.")})
    layer_scale = any(LAYER_SCALE_KEY.fullmatch(k) for k in encoder)
    expected = [*ENCODER_TOP, *(f"blocks.{i}.{p}.{s}" for i in range(depth) for p in BLOCK_PARAMS for s in ("weight", "bias")),
                *(f"blocks.{i}.{ls}.gamma" for i in range(depth) for ls in ("ls1", "ls2") if layer_scale)]  # fmt: skip
    notes = {"qkv.bias": " (our ViT's blocks have qkv biases)", "gamma": " (other blocks have layer scale)"}
    for key in expected:
        require(encoder, key, path, next((note for end, note in notes.items() if key.endswith(end)), ""))
    registers = read_registers(encoder, int(width), path)
    rows = encoder["pos_embed"].shape[-2]
    grid = math.isqrt(max(rows - 1, 0))
    if grid * grid != rows - 1:
        with_registers = math.isqrt(max(rows - 1 - registers, 0))
        if registers and with_registers**2 == rows - 1 - registers:
            raise CheckpointError(f"{path}: pos_embed has {rows} rows, positions for the CLS token, {registers} register "
                                  f"tokens and a {with_registers}x{with_registers} grid: our ViT gives register tokens no "
                                  "position (timm's no_embed_class=True, as DINOv2's)")  # fmt: skip
        raise CheckpointError(f"{path}: pos_embed has {rows} rows, not 1 (CLS) + a square grid")
    ratio = encoder["blocks.0.mlp.fc1.weight"].shape[0] / width
    return Architecture(int(width), depth, int(patch), int(chans), grid, ratio, None, layer_scale, registers)


def pretrained_cfg(metadata: dict[str, str], path: Path) -> dict[str, Any]:
    """timm's pretrained_cfg of the file: from its safetensors metadata (our exports write it), or
    from the `config.json` timm writes beside `model.safetensors` on the Hugging Face hub."""
    if "pretrained_cfg" in metadata:
        return json.loads(metadata["pretrained_cfg"])
    sibling = path.with_name("config.json")
    if sibling.is_file():
        try:
            config = json.loads(sibling.read_text())
        except (OSError, ValueError):
            return {}
        if isinstance(config, dict) and "architecture" in config and isinstance(config.get("pretrained_cfg"), dict):
            return config["pretrained_cfg"]
    return {}


# The normalization each format's own training used when a file records none: the official MAE,
# DINOv2 and mmpretrain (its data preprocessor) use ImageNet's statistics; timm's ViT default config
# is 0.5 / 0.5 (its tagged releases that differ, such as `.mae`, carry a config.json beside the
# weights), except its DINOv2 models (ImageNet's), told by their patch 14 with layer scale.
FORMAT_NORMALIZATION = {"official MAE": (IMAGENET_MEAN, IMAGENET_STD, "ImageNet's mean/std (the official MAE's)"),
                        "official DINOv2": (IMAGENET_MEAN, IMAGENET_STD, "ImageNet's mean/std (DINOv2's)"),
                        "mmpretrain": (IMAGENET_MEAN, IMAGENET_STD, "ImageNet's mean/std (mmpretrain's default)"),
                        "timm": (TIMM_VIT_MEAN, TIMM_VIT_STD, "timm's ViT default mean/std 0.5/0.5"),
                        "timm DINOv2": (IMAGENET_MEAN, IMAGENET_STD,
                                        "ImageNet's mean/std (timm's DINOv2 models': patch 14 with layer scale)")}  # fmt: skip


def normalization_kind(kind: str, arch: Architecture) -> str:
    """The FORMAT_NORMALIZATION entry of a file's format (timm files: DINOv2's or timm's default)."""
    if not kind.startswith("timm"):
        return kind
    return "timm DINOv2" if arch.layer_scale and arch.patch_size == 14 else "timm"


def read_normalization(metadata: dict[str, str], path: Path, channels: int, kind: str) -> Normalization:
    """The mean/std the encoder was trained with: the file's own when it records them, else its
    format's default (FORMAT_NORMALIZATION; for 1-channel files the channel average). The source is
    said in the import line, and `load_encoder(mean=, std=)` / `--mean --std` override it."""
    cfg = pretrained_cfg(metadata, path)
    mean, std = cfg.get("mean"), cfg.get("std")
    if mean and std and len(mean) == len(std) == channels:
        where = "its metadata" if "pretrained_cfg" in metadata else "config.json beside it"
        return Normalization(tuple(map(float, mean)), tuple(map(float, std)), f"the file's mean/std ({where})")
    mean3, std3, source = FORMAT_NORMALIZATION.get(kind, FORMAT_NORMALIZATION["timm"])
    source += "; the file records none: --mean/--std set others"
    if channels == 3:
        return Normalization(mean3, std3, source)
    mean1, std1 = sum(mean3) / 3, sum(std3) / 3
    return Normalization((mean1,) * channels, (std1,) * channels, f"{source} (averaged over channels)")


def file_kind(container: str, state: dict[str, Tensor], metadata: dict[str, str], path: Path) -> str:
    if any(k.startswith("backbone.") for k in state):
        return "mmpretrain"
    if container == "model":
        return "official MAE"
    if is_dinov2_release(container, state):
        return "official DINOv2"
    if "hybridssl_method" in metadata:
        return "hybridssl export"
    return "timm safetensors" if is_safetensors(path) else "timm"


def read_foreign(path: str | Path, contents: Any, metadata: dict[str, str]) -> ForeignCheckpoint:
    """A loaded file of another library, renamed to ours, with its architecture and normalization."""
    path = Path(path)
    container, state = flat_tensors(contents, path)
    if not state or not any(k.endswith(("patch_embed.proj.weight", "patch_embed.projection.weight")) for k in state):
        raise CheckpointError(
            f"{path} is not a hybridssl checkpoint, nor an official MAE, timm or mmpretrain ViT checkpoint, "
            "nor a DINOv2 release (no patch embedding among its tensors)"
        )
    kind = file_kind(container, state, metadata, path)
    left: list[str] = []
    if kind == "mmpretrain":
        state, left = from_mmpretrain(state, path)
    elif kind == "official DINOv2":
        state, left = from_dinov2(state)
    encoder, decoder, more = split_parts(state, path)
    encoder = with_cls_position_row(encoder)  # timm's no_embed_class layout -> ours
    heads = json.loads(metadata.get("timm_kwargs", "{}")).get("num_heads")
    architecture = replace(read_architecture(encoder, path), num_heads=heads)
    groups = [f"{LEFT_OUT.get(g, g)} ({g if g in LEFT_OUT_TENSORS else g + '.*'})" for g in dict.fromkeys(left + more)]
    if decoder and not complete_decoder(decoder):
        decoder, groups = {}, [*groups, "an incomplete MAE decoder"]
    normalization = read_normalization(metadata, path, architecture.in_chans, normalization_kind(kind, architecture))
    return ForeignCheckpoint(path, kind, encoder, decoder, tuple(groups), architecture, normalization, metadata)
