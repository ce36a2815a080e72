"""The engine: one generic LightningModule, optimizer/schedule, checkpoints; it knows no method by name."""
