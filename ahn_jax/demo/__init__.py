"""The miniature reproduction: `python -m ahn_jax.demo` (docs/results.md)."""
