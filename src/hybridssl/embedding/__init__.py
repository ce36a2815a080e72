"""Using a trained encoder: embeddings of images (encoder.py), the files they are kept in (store.py)
and what is near what (neighbours.py). Needs only the weights layer: no engine, no Lightning."""
