"""Evaluation needs only an encoder and a dataset: features -> k-NN, linear probe, ..."""
