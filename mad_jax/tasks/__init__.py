"""The six MAD synthetic tasks (being written)."""
