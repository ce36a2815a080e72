"""hybridssl: self-supervised ViT pretraining uniting masked image modeling and contrastive learning."""

__version__ = "0.1.0"
