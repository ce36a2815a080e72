"""`--init-from`: a method starts from the weights of one of our checkpoints or of a published encoder
(weights/start.py reads either kind and decides the run's model and sizes from it).

Ours: the whole encoder, which must fit, plus every other entry (heads, queues) whose name and shape
match, so encoder-only (MAE -> head) and encoder + head (head -> tuning) stages chain alike. Published:
the encoder, whose architecture must be the run's (an error names the field that differs: width,
depth, layer scale, register tokens, patch size, channels), and the
file's MAE decoder where the method has a decoder it fits entirely; classifier heads, other necks and
a decoder that does not fit are left out, and one line says what was loaded and left out. In both,
position tables are resampled to the run's grid.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import Tensor

from hybridssl.config import RunConfig
from hybridssl.errors import CheckpointError
from hybridssl.methods.base import Method
from hybridssl.nn.vit import ViTConfig
from hybridssl.weights.loading import announce, describe
from hybridssl.weights.ours import check_fits, check_hybridssl, first_misfit, is_hybridssl, run_label, trained_with
from hybridssl.weights.reading import read_weights, require_finite
from hybridssl.weights.released import ForeignCheckpoint, decoder_shape, read_foreign
from hybridssl.weights.resample import resample_tables, resampling_note


def init_from_checkpoint(method: Method, path: Path, run_config: RunConfig | None = None) -> set[str]:
    """Starts from another run's weights (of any method) or a published encoder (module docstring);
    returns the method's state-dict names copied."""
    contents, metadata = read_weights(path)
    if is_hybridssl(contents):
        ckpt = check_hybridssl(contents, path)
        require_finite({k: v for k, v in ckpt["state_dict"].items() if k.startswith("method.encoder.")}, path)
        return init_from_ours(method, ckpt, Path(path), run_config)
    foreign = read_foreign(path, contents, metadata)
    require_finite(foreign.encoder, path)
    return init_from_foreign(method, foreign, run_config)


def load_matched(method: Method, state: dict[str, Tensor]) -> set[str]:
    """Loads `state` (a part of the method's entries); EMA copies it did not hold restart from their sources."""
    method.load_state_dict(state, strict=False)
    method.after_init_from(set(state))
    return set(state)


def init_from_ours(method: Method, ckpt: dict[str, Any], path: Path, run_config: RunConfig | None) -> set[str]:
    this_run = f", this run is {run_label(run_config)}" if run_config is not None else ""
    problem = f"init_from: checkpoint {path} was trained with {trained_with(ckpt)}{this_run}; its encoder does not fit"
    state = {k.removeprefix("method."): v for k, v in ckpt["state_dict"].items()}
    own = method.state_dict()
    changes = resample_tables(state, own)
    check_fits({"state_dict": state}, {f"encoder.{k}": v for k, v in method.encoder.state_dict().items()}, problem)
    loaded = load_matched(method, {k: v for k, v in state.items() if k in own and own[k].shape == v.shape})
    if changes:
        announce(f"init_from: {path}: {resampling_note(changes)}")
    return loaded


def architecture_problem(foreign: ForeignCheckpoint, cfg: ViTConfig, run_config: RunConfig | None) -> str | None:
    """The line naming the first field in which the run's encoder differs from the file's."""
    arch, path = foreign.architecture, foreign.path
    model = f"--model {run_config.model}" if run_config is not None else "this run's encoder"
    for field, theirs, ours in (("embed_dim", arch.embed_dim, cfg.embed_dim), ("depth", arch.depth, cfg.depth)):
        if theirs != ours:
            return f"model: {path} has {field} {theirs}, {model} has {ours}; leave out --model to take the file's"
    if arch.layer_scale != cfg.layer_scale:
        has = {True: "has layer scale", False: "has none"}
        return (f"layer scale: {path} {has[arch.layer_scale]}, {model} {has[cfg.layer_scale]}; "
                "leave out --model to take the file's")  # fmt: skip
    if arch.reg_tokens != cfg.reg_tokens:
        return (f"reg_tokens: {path} has {arch.reg_tokens} register tokens, {model} has {cfg.reg_tokens}; "
                "leave out --model to take the file's")  # fmt: skip
    if arch.patch_size != cfg.patch_size:
        return f"patch_size: {path} has {arch.patch_size} px patches, this run has {cfg.patch_size}"
    if arch.in_chans != cfg.in_chans:
        return f"channels: {path} takes {arch.in_chans}-channel images, this run's have {cfg.in_chans}"
    return None


def decoder_part(foreign: ForeignCheckpoint, own: dict[str, Tensor], method: Method) -> tuple[dict[str, Tensor], str, str]:
    """(the decoder entries to load, in the method's names; what is left out; a note), about the file's MAE decoder."""
    ours = {k: v for k, v in own.items() if k.startswith("decoder.")}
    theirs = {f"decoder.{k}": v for k, v in foreign.decoder.items()}
    if not theirs:
        return {}, "", f"no MAE decoder in the file ({method.name}'s starts fresh)" if ours else ""
    if not ours:
        return {}, f"MAE decoder ({method.name} has none)", ""
    resample_tables(theirs, own)
    if set(theirs) != set(ours) or first_misfit(theirs, ours):
        (w, d, _), (ow, od, _) = foreign.decoder_shape(), decoder_shape({k[8:]: v for k, v in ours.items()})  # type: ignore[misc]
        return {}, f"MAE decoder (the file's is {w} wide x {d} blocks, this run's {ow} x {od}: method_args.decoder_*)", ""
    return theirs, "", ""


def init_from_foreign(method: Method, foreign: ForeignCheckpoint, run_config: RunConfig | None) -> set[str]:
    path, cfg = foreign.path, method.encoder.cfg
    problem = architecture_problem(foreign, cfg, run_config)
    if problem:
        raise CheckpointError(problem)
    own = method.state_dict()
    encoder = {f"encoder.{k}": v for k, v in foreign.encoder.items()}
    changes = resample_tables(encoder, own)
    misfit = first_misfit(encoder, {k: v for k, v in own.items() if k.startswith("encoder.")})
    if misfit:
        raise CheckpointError(f"init_from: {path}: its encoder does not fit this run's ({misfit})")
    decoder, decoder_left, decoder_note = decoder_part(foreign, own, method)
    loaded = load_matched(method, {**encoder, **decoder})
    parts = f"the encoder ({len(encoder)} tensors)" + (f" and the MAE decoder ({len(decoder)})" if decoder else "")
    left = [*foreign.left_out, *([decoder_left] if decoder_left else [])]
    clauses = [f"loaded {parts}", f"left out: {', '.join(left) or 'nothing'}", decoder_note,
               resampling_note(changes) if changes else "", f"images normalized with {foreign.normalization.source}"]  # fmt: skip
    announce(f"init_from: {path} ({describe(foreign)}): {'; '.join(c for c in clauses if c)}")
    return loaded
