"""Pretraining methods; importing this package registers all of them."""

from hybridssl.methods.base import METHODS, Batch, Method, MethodConfig, Recipe, Stage, register
from hybridssl.methods import mae  # noqa: F401  (registers)
from hybridssl.methods import can, cmae, macrl  # noqa: F401  (registers)
from hybridssl.methods import simclr, mocov3, nnclr, mae_ct  # noqa: F401  (registers)
from hybridssl.methods import mim_refiner  # noqa: F401  (registers)

__all__ = ["METHODS", "Batch", "Method", "MethodConfig", "Recipe", "Stage", "register"]
