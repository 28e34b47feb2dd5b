"""Chunk math shared by the chunked linear recurrences (gated delta rule, DeltaNet, Mamba2 SSD).

All of them write a key-by-value state S [H, E] per head with a scalar log-decay per token. Split
into chunks of C tokens, with G the in-chunk cumulative log-decay (a value here, not a shape
letter), each chunk is

  U  = u_base - w S                       (delta rule; w = 0 for SSD)
  O  = (q e^G) S + P U                    P = tril(q k^T * e^(G_t - G_i)), diagonal included
  S' = e^(G_last) S + (k e^(G_last - G))^T U

so everything but a short scan over chunks is batched matrix products over all chunks at once.

The "chunked" impls (XLA) compute the per-chunk terms inside the scan step instead
(`grouped_chunk_scan`): on CPU the products batched over all chunks stream their [B, N, Q, C, C]
intermediates through memory, while one chunk of a few heads stays in cache (docs/kernels.md; the
measurements are in docs/benchmarks.md). The "batched" and Pallas impls, shaped for accelerators,
keep the terms batched over all chunks (`chunk_terms`) and scan only the state
(kernels/common/inter_chunk_xla.py, kernels/common/inter_chunk_pallas.py).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from kernels.common.masking import MASKED
from kernels.common.varying import vary_like

# `grouped_chunk_scan`: rematerialise each scan step in the backward pass (only the state entering
# each chunk is saved); unroll the groups of heads in Python up to this many (a `lax.map` beyond)
REMAT = True
UNROLL_GROUPS = 16
# diagonal blocks of the decay matrix that take a masked exp (sizes compared: docs/benchmarks.md)
DECAY_BLOCK = 32


def initial_state(state, shape, inputs) -> jax.Array:
    """The fp32 state a scan starts from (zeros if `state` is None), varying over every shard_map
    axis the inputs vary over (`vary_like`): the state it carries out depends on all the inputs,
    so zeros (or a state replicated over the heads axis) would change the carry's type."""
    state = jnp.zeros(shape, jnp.float32) if state is None else state.astype(jnp.float32)
    return vary_like(state, inputs)


def strictly_lower(n: int) -> jax.Array:
    """[n, n] bool mask of the entries below the diagonal (row > column)."""
    return jnp.arange(n)[:, None] > jnp.arange(n)[None, :]


def pad_time(x: jax.Array, chunk: int) -> jax.Array:
    """Zero-pad axis 1 (time) to a multiple of `chunk`: zero gates and inputs are identity steps."""
    pad = -x.shape[1] % chunk
    if pad == 0:
        return x
    widths = [(0, 0)] * x.ndim
    widths[1] = (0, pad)
    return jnp.pad(x, widths)


def to_chunks(x: jax.Array, chunk: int) -> jax.Array:
    """[B, T, N, ...] (T a multiple of chunk) -> [B, N, Q, C, ...] in fp32."""
    B, T, N = x.shape[:3]
    x = x.reshape(B, T // chunk, chunk, N, *x.shape[3:]).astype(jnp.float32)
    return jnp.moveaxis(x, 3, 1)


def from_chunks(x_BNQCE: jax.Array, length: int) -> jax.Array:
    """[B, N, Q, C, E] -> [B, T, N, E], cropped to `length`."""
    B, N, Q, C, E = x_BNQCE.shape
    return jnp.moveaxis(x_BNQCE, 1, 3).reshape(B, Q * C, N, E)[:, :length]


def segment_sums(x: jax.Array) -> jax.Array:
    """[..., m] -> [..., m, m]: x_{i+1} + ... + x_t at (t, i) for t >= i (0 on the diagonal), 0
    above. Each entry sums its own segment only, so its rounding is relative to its own size, not
    to a long prefix sum's (as Mamba2's segsum). For short segments, one product with a constant
    0/1 [m, m*m] matrix: a single matmul for all rows, where XLA:CPU's cumsum of the masked [m, m]
    matrix was slower; longer ones (the constant grows as m^3) take the cumsum.
    """
    m = x.shape[-1]
    if m > 64:
        return jnp.cumsum(jnp.where(strictly_lower(m), x[..., :, None], 0.0), axis=-2)
    t, i, j = (jnp.arange(m).reshape(shape) for shape in ((1, m, 1), (1, 1, m), (m, 1, 1)))
    member = ((i < j) & (j <= t)).astype(x.dtype).reshape(m, m * m)  # [j, (t, i)]
    sums = jnp.matmul(x, member, precision=jax.lax.Precision.HIGHEST)
    return sums.reshape(*x.shape[:-1], m, m)


def decay_matrix(g: jax.Array, *, strict: bool, block: int = DECAY_BLOCK) -> jax.Array:
    """e^(g_{i+1} + ... + g_t) = e^(G_t - G_i) on the lower triangle (t > i if strict, else
    t >= i), 0 above it, from per-token log-decays g [..., C] <= 0.

    Only the diagonal `block` x `block` blocks take exp of a (masked) matrix. Below them, with
    rho_r the G of the first row of t's block r, e^(G_t - G_i) = e^(G_t - rho_r) e^(rho_r - G_i):
    i lies in an earlier block, so both exponents are <= 0 (no overflow for any decay; a factor
    that underflows to 0 bounds a product that is smaller still). Why: XLA:CPU evaluates the exp
    of a broadcast [C, C] difference G_t - G_i much more slowly than on a plain array (timings:
    docs/benchmarks.md).

    Precision: every exponent is a segment sum (`segment_sums`), never the difference of two
    prefix sums, whose rounding (eps |G|) would become the decay's relative error after a strong
    decay; and e^0 is a constant, whose two opposite gradient terms would otherwise cancel in
    rounding. Both matter for gradients with strong decays in long chunks (docs/kernels.md).
    """
    C = g.shape[-1]
    b = max(d for d in range(1, min(block, C) + 1) if C % d == 0)
    n = C // b
    lead = g.shape[:-1]
    gb = g.reshape(*lead, n, b)
    inside = segment_sums(gb)  # [..., r, x, y]
    x, y = jnp.arange(b)[:, None], jnp.arange(b)[None, :]
    D = jnp.where(x == y, 1.0, jnp.exp(jnp.where(x > y, inside, MASKED)))
    a = D[..., :, 0]  # e^(G_t - rho_r): from the first row of t's block to t
    # e^(rho_r - G_i) for i in block s < r: the rest of block s after i, blocks s+1 .. r-1, and
    # the first token of block r
    rest = inside[..., -1, :]  # [..., s, y]
    block_sums = segment_sums(jnp.sum(gb, axis=-1))  # [..., p, s]: blocks s+1 .. p
    between = jnp.concatenate([jnp.zeros_like(block_sums[..., :1, :]), block_sums[..., :-1, :]], -2)
    exponent = rest[..., None, :, :] + (between + gb[..., :, :1])[..., None]  # [..., r, s, y]
    earlier = (jnp.arange(n)[None, :] < jnp.arange(n)[:, None])[:, :, None]  # [r, s, 1]
    Bm = jnp.exp(jnp.where(earlier, exponent, MASKED))
    if strict:
        D = jnp.where(x == y, 0.0, D)
    same = (jnp.arange(n)[:, None] == jnp.arange(n)[None, :])[:, None, :, None]  # [r, 1, s, 1]
    full = jnp.where(same, D[..., :, :, None, :], a[..., :, :, None, None] * Bm[..., :, None, :, :])
    return full.reshape(*lead, C, C)


def decay_to_end(g: jax.Array) -> jax.Array:
    """e^(g_{t+1} + ... + g_last) along the chunk, as suffix sums (see decay_matrix, precision)."""
    later = strictly_lower(g.shape[-1]).astype(g.dtype)  # [j, t]: j > t
    return jnp.exp(jnp.matmul(g, later, precision=jax.lax.Precision.HIGHEST))


def masked_decayed_products(lhs, rhs, g, precision, *, strict_rows: int = 0):
    """tril(lhs rhs^T * e^(G_t - G_i)) per chunk; lhs [..., R*C, H] is R stacked row blocks.

    g [..., C] are the per-token log-decays. Row blocks r < strict_rows are masked strictly
    (t > i), the others with the diagonal. The decay is exactly 0 above the diagonal, so the
    product needs no further mask.
    """
    C = g.shape[-1]
    R = lhs.shape[-2] // C
    decay = decay_matrix(g, strict=False)
    strict = jnp.where(strictly_lower(C), decay, 0.0)
    rows = jnp.concatenate([strict] * strict_rows + [decay] * (R - strict_rows), axis=-2)
    return jnp.einsum("...th,...ih->...ti", lhs, rhs, precision=precision) * rows


def chunk_terms(q, k, g, scale: float, precision):
    """The per-chunk terms that do not depend on the state: q e^G, P, k e^(G_last - G), e^G_last.

    g [..., C] are the per-token log-decays, G their prefix sums.
    """
    qs = q * scale
    P = masked_decayed_products(qs, k, g, precision)
    from_start, to_end, whole = decays(g)
    return qs * from_start[..., None], P, k * to_end[..., None], whole


def decays(g: jax.Array):
    """Per-token decays of a chunk from its log-decays g [..., C], G their prefix sums:
    e^G (from the chunk's start), e^(G_last - G) (to its end, `decay_to_end`), e^G_last."""
    G = jnp.cumsum(g, axis=-1)
    return jnp.exp(G), decay_to_end(g), jnp.exp(G[..., -1])


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def unit_lower_inverse(A: jax.Array, precision, block: int = 16) -> jax.Array:
    """(I + A)^-1 for strictly lower-triangular A [..., C, C], from matrix products only.

    Its gradient is the inverse's own, -X^T dX X^T on the strict lower triangle (the entries that
    are read), two [C, C] products instead of the transposes of every product below.
    """
    return _unit_lower_inverse(A, precision, block)


def _unit_lower_inverse_fwd(A, precision, block):
    X = _unit_lower_inverse(A, precision, block)
    return X, X


def _unit_lower_inverse_bwd(precision, block, X, dX):
    XT_dX = jnp.einsum("...ji,...jk->...ik", X, dX, precision=precision)
    dA = -jnp.einsum("...ij,...kj->...ik", XT_dX, X, precision=precision)
    return (jnp.where(strictly_lower(X.shape[-1]), dA, 0.0),)


unit_lower_inverse.defvjp(_unit_lower_inverse_fwd, _unit_lower_inverse_bwd)


def _unit_lower_inverse(A: jax.Array, precision, block: int) -> jax.Array:
    """The forward of `unit_lower_inverse`.

    XLA:CPU's batched `triangular_solve` is slow on these small matrices (docs/benchmarks.md);
    this builds the inverse as fla's
    `solve_tril` does: the diagonal `block` x `block` blocks by doubling (blocks of size b -> 2b:
    X <- X - X L X, L the coupling between paired blocks, X block-diagonal), then the pairs of
    blocks are merged upwards with [[X11, 0], [X21, X22]], X21 = -X22 A21 X11. Each step multiplies
    exact inverses of sub-blocks (no power series), so fp32 rounding stays like a substitution.
    C that is not a power of two is padded with identity rows.
    """
    C = A.shape[-1]
    Cp = 1 << (C - 1).bit_length()
    if Cp != C:
        A = jnp.pad(A, [(0, 0)] * (A.ndim - 2) + [(0, Cp - C), (0, Cp - C)])
    b0 = min(block, Cp)
    n = Cp // b0
    D = jnp.stack([A[..., j * b0 : (j + 1) * b0, j * b0 : (j + 1) * b0] for j in range(n)], -3)
    r, c = jnp.arange(b0)[:, None], jnp.arange(b0)[None, :]
    X = jnp.broadcast_to(jnp.eye(b0, dtype=A.dtype), D.shape)
    b = 1
    while b < b0:  # within each diagonal block: blocks of b -> 2b
        pair = ((r // (2 * b)) == (c // (2 * b))) & ((r // b) % 2 == 1) & ((c // b) % 2 == 0)
        XL = jnp.einsum("...ij,...jk->...ik", X, jnp.where(pair, D, 0.0), precision=precision)
        X = X - jnp.einsum("...ij,...jk->...ik", XL, X, precision=precision)
        b *= 2
    blocks = [X[..., j, :, :] for j in range(n)]
    while len(blocks) > 1:  # merge neighbouring blocks of size b into 2b
        merged = []
        for j in range(0, len(blocks), 2):
            X11, X22 = blocks[j], blocks[j + 1]
            s = j * b
            A21 = A[..., s + b : s + 2 * b, s : s + b]
            X21 = jnp.einsum("...ij,...jk->...ik", X22, A21, precision=precision)
            X21 = -jnp.einsum("...ij,...jk->...ik", X21, X11, precision=precision)
            top = jnp.concatenate([X11, jnp.zeros_like(X11)], axis=-1)
            merged.append(jnp.concatenate([top, jnp.concatenate([X21, X22], axis=-1)], axis=-2))
        blocks = merged
        b *= 2
    return blocks[0][..., :C, :C]


def heads_per_group(N: int, most: int = 2) -> int:
    """How many heads one scan step handles: the largest divisor of N up to `most` (cache-sized;
    2 measured fastest on CPU for the GDN and level with the best for the SSD, docs/benchmarks.md).
    """
    return max(n for n in range(1, min(N, most) + 1) if N % n == 0)


def to_groups(x: jax.Array, chunk: int, heads: int) -> jax.Array:
    """[B, T, N, ...] -> [B * N / heads, Q, heads, C, ...] in fp32, T zero-padded to Q * C."""
    x = pad_time(x, chunk)
    B, T, N = x.shape[:3]
    x = x.reshape(B, T // chunk, chunk, N // heads, heads, *x.shape[3:])
    x = jnp.moveaxis(x, (3, 1, 4), (1, 2, 3))  # B, groups, Q, heads, C, ...
    return x.reshape(B * (N // heads), T // chunk, heads, chunk, *x.shape[5:]).astype(jnp.float32)


def from_groups(x: jax.Array, batch: int, length: int) -> jax.Array:
    """[B * groups, Q, heads, C, E] -> [B, T, N, E], cropped to `length`."""
    _, Q, n, C, E = x.shape
    x = x.reshape(batch, -1, Q, n, C, E)
    return jnp.moveaxis(x, (1, 3), (3, 4)).reshape(batch, Q * C, -1, E)[:, :length]


def grouped_chunk_scan(step, state_BNHE, xs, per_group=()):
    """Scan `step(S, chunk, *per_group) -> (S, O)` over chunks, one group of heads at a time.

    xs: arrays [B * groups, Q, heads, C, ...] (`to_groups`); per_group: arrays [B * groups, ...]
    that stay fixed along the scan. Returns (O [B * groups, Q, heads, C, E], final S [B, N, H, E]).
    """
    B, N, H, E = state_BNHE.shape
    heads = xs[0].shape[2]
    S0 = state_BNHE.reshape(B * (N // heads), heads, H, E)

    def one_group(args):
        S, xs_g, consts = args
        body = lambda S, chunk: step(S, chunk, *consts)  # noqa: E731
        if REMAT:
            body = jax.checkpoint(body)
        return jax.lax.scan(body, S, xs_g)

    if S0.shape[0] > UNROLL_GROUPS:
        final, O = jax.lax.map(one_group, (S0, tuple(xs), tuple(per_group)))
    else:
        outs = [
            one_group((S0[j], tuple(x[j] for x in xs), tuple(c[j] for c in per_group)))
            for j in range(S0.shape[0])
        ]
        final = jnp.stack([o[0] for o in outs])
        O = jnp.stack([o[1] for o in outs])
    return O, final.reshape(B, N, H, E)
