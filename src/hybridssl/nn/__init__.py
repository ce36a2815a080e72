"""Shared neural-network parts; nothing here knows about methods, the engine or data."""
