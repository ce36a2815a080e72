"""Data flows one way: sources (uint8 tensors + labels + ids) -> loader (batches) -> views (on device)."""
