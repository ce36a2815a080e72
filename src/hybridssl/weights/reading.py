"""Reading weight files safely: torch files with weights_only=True, safetensors by their header.

Nothing a file holds is executed: a torch file may hold tensors and plain containers only (and
argparse.Namespace, which the official MAE checkpoints carry), safetensors hold tensors only.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from hybridssl.errors import CheckpointError


def load_failure(exc: Exception) -> str:
    """torch's reasons in one short line; a refused Python object is named, never constructed."""
    text = str(exc)
    refused = re.search(r"Unsupported global: GLOBAL (\S+)", text)
    if refused:
        return f"it holds a Python object ({refused.group(1)}), which a weights-only load refuses"
    first = re.sub(r"\x1b\[[0-9;]*m", "", text).strip().splitlines()[0] if text.strip() else ""
    return f"{type(exc).__name__}: {first[:200]}"


def read_torch_file(path: str | Path, map_location: str | torch.device = "cpu", mmap: bool = False) -> Any:
    """torch.load with weights_only=True: tensors and plain containers only, never arbitrary objects
    (argparse.Namespace is allowed too: the official MAE training checkpoints store their `args` in
    one, and rebuilding it only sets attributes). `mmap` reads tensors lazily; files in torch's legacy
    (pre-zip) format cannot be mapped and are read whole."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except RuntimeError as exc:
        if mmap and "mmap can only be used" in str(exc):
            return read_torch_file(path, map_location, mmap=False)
        raise CheckpointError(f"{path} is not a readable checkpoint ({load_failure(exc)})") from None
    except Exception as exc:  # torch raises many types for foreign or torn files
        raise CheckpointError(f"{path} is not a readable checkpoint ({load_failure(exc)})") from None


def is_safetensors(path: Path) -> bool:
    """safetensors files start with an 8-byte header length and a JSON header."""
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < 100_000_000


def read_weights(path: str | Path, mmap: bool = True) -> tuple[Any, dict[str, str]]:
    """The file's contents (a weights-only torch load, or the tensors of a safetensors file) and its
    safetensors metadata ({} for torch files)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if not is_safetensors(path):
        return read_torch_file(path, mmap=mmap), {}
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
    except Exception as exc:  # safetensors raises its own error types for torn or foreign headers
        raise CheckpointError(f"{path} is not a readable safetensors file ({type(exc).__name__}: {str(exc)[:200]})") from None




def require_finite(tensors: dict[str, Tensor], path: str | Path) -> None:
    """A one-line CheckpointError naming the first tensor holding NaN or infinity: such weights give
    features that measure as a plausible chance-level accuracy instead of failing."""
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise CheckpointError(f"{path}: its weights are damaged ({name} holds NaN or infinite values)")
