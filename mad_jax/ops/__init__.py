"""Pure-jnp reference ops (being written)."""
