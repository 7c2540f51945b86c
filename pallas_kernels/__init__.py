"""Pallas kernels (being written)."""
