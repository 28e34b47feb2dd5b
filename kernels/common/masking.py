"""The one mask value of the kernels."""

# Finite on purpose. Masked log-decay differences take it *before* `exp` (e^MASKED = 0 with no inf,
# so no inf * 0 = NaN in a gradient); masked attention scores take it before the softmax (a row
# that sees no key gives a uniform softmax instead of NaN, and a running max can start from it).
MASKED = -1e30
