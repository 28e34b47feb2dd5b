"""The cost model: parameter counts, cache memory and FLOPs from shapes alone (the paper's
Table 1 formulas); `python -m ahn_jax.costs` prints them."""
