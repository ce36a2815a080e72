"""Weights in and out, between methods and the engine: our checkpoints (ours.py), released formats
(released.py), what an `--init-from` file decides and copies (start.py, init_from.py), any file's
encoder at any size (loading.py, resample.py) and timm export (export.py). Loading an encoder needs
neither the engine nor Lightning."""
