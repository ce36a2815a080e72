"""Pretraining methods; importing this package registers all of them."""

from hybridssl.methods.base import METHODS, Batch, Method, MethodConfig, register
from hybridssl.methods import mae  # noqa: F401  (registers)
from hybridssl.methods import can, cmae, macrl  # noqa: F401  (registers)

__all__ = ["METHODS", "Batch", "Method", "MethodConfig", "register"]
