"""The package version, below every layer so that results and checkpoints can record it."""

__version__ = "0.1.0"
