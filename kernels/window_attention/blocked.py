"""Blocked sink + window causal attention in XLA: compute follows what is visible, W and S traced.

Queries and keys go in blocks of `block` tokens. For each query block, a scan over key blocks
skips (`lax.cond`) every block that holds no visible key (above the diagonal, or outside both the
sink prefix and the query block's window band) and folds the rest in with an online softmax, so the
[T, T] score matrix is never formed: T^2 / 2 work causal, T (W + S) windowed, one compile for every
W and S. W and S may differ per row ([B]): the batch runs one program, so a key block is skipped
only when no row sees it, which the largest W and the largest S decide (the rows that do not see
it are masked inside it).

The gradient is written out (a custom VJP, FlashAttention-2's backward): the forward keeps only
its output and each query's log-sum-exp, and the backward recomputes each visible block's
probabilities once, skipping the same blocks and touching only the visited blocks' slices of dk
and dv, so a windowed backward stays O(T (W + S)). Differentiating the forward's scans instead
cost over ten times the forward on XLA:CPU (bench/backward_parts.py). Being a custom VJP, it has
no forward-mode derivative (`jax.jvp`); nothing here uses one.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from kernels.common.masking import MASKED
from kernels.common.varying import vary_like
from kernels.window_attention.naive import per_row, row_mask

# The backward's block: its [block, block] probabilities, scores and their gradients per row and
# head stay in a CPU core's cache at 128 (T = 256, 16 rows x 2 heads: forward + backward 14 ms
# with 128 against 29 ms with the forward's 256, measured on this project's 2-core CPU;
# docs/benchmarks.md, "The training step's backward on the CPU")
BACKWARD_BLOCK = 128


def blocked(q_BTNH, k_BTKH, v_BTKE, window, sinks, scale: float, block: int):
    """q [B, T, N, H], k [B, T, K, H], v [B, T, K, E] -> [B, T, N, E] in q's dtype; `window` and
    `sinks` are scalars or int32 [B]."""
    B = q_BTNH.shape[0]
    window_B, sinks_B = per_row(window, B), per_row(sinks, B, "sinks")
    return _attention(q_BTNH, k_BTKH, v_BTKE, window_B, sinks_B, scale, block)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6))
def _attention(q_BTNH, k_BTKH, v_BTKE, window_B, sinks_B, scale, block):
    out, _ = _forward(q_BTNH, k_BTKH, v_BTKE, window_B, sinks_B, scale, block)
    return out


class _Blocks:
    """The [B, T, heads, d] <-> [n, B, K, (G,) block, d] layout changes of one call."""

    def __init__(self, q_BTNH, k_BTKH, block: int):
        self.B, self.T, self.N, _ = q_BTNH.shape
        self.K = k_BTKH.shape[2]
        self.block = block
        self.n = -(-self.T // block)

    def keys(self, x_BTKD):  # -> [n, B, K, block, d]
        # padded keys sit after every real query: the causal mask hides them
        pad = self.n * self.block - self.T
        x = jnp.pad(x_BTKD, ((0, 0), (0, pad), (0, 0), (0, 0)))
        return x.reshape(self.B, self.n, self.block, *x.shape[2:]).transpose(1, 0, 3, 2, 4)

    def queries(self, x_BTND):  # -> [n, B, K, G, block, d]
        x = self.keys(x_BTND)
        return x.reshape(self.n, self.B, self.K, self.N // self.K, self.block, x.shape[-1])

    def from_queries(self, x):  # [n, B, K, G, block, d] -> [B, T, N, d]
        x = x.transpose(1, 0, 4, 2, 3, 5).reshape(self.B, self.n * self.block, self.N, -1)
        return x[:, : self.T]

    def query_rows(self, x_BTN):  # one value per query and head -> [n, B, K, G, block]
        return self.queries(x_BTN[..., None])[..., 0]

    def from_query_rows(self, x):  # [n, B, K, G, block] -> [B, T, N]
        return self.from_queries(x[..., None])[..., 0]

    def from_keys(self, x):  # [n, B, K, block, d] -> [B, T, K, d]
        x = x.transpose(1, 0, 3, 2, 4).reshape(self.B, self.n * self.block, self.K, -1)
        return x[:, : self.T]


def _needed(i, j, block, window_max, sinks_max):
    """Whether key block j holds a key some row's query in block i sees: at or below the diagonal,
    and its last key reaches the window of the block's first query, or it holds a sink."""
    reaches = ((j + 1) * block - 1 > i * block - window_max) | (j * block < sinks_max)
    return (j <= i) & reaches


def _fold_needed_key_blocks(step, carry, i, layout: _Blocks, blocks, widest):
    """`carry` after `step(carry, j, *blocks[j])` for each key block j that query block i needs
    (`_needed`, from the widest row's W and S); the other blocks are skipped."""
    window_max, sinks_max = widest

    def key_block(carry, inputs):
        j, *block_j = inputs
        needed = _needed(i, j, layout.block, window_max, sinks_max)
        return jax.lax.cond(needed, lambda c: step(c, j, *block_j), lambda c: c, carry), None

    carry, _ = jax.lax.scan(key_block, carry, (jnp.arange(layout.n), *blocks))
    return carry


def _scores(q_BKGCH, k_BKCH, i, j, block, scale, window_B, sinks_B):
    """Scaled scores of query block i against key block j (MASKED where not visible), and the
    visibility mask."""
    within = jnp.arange(block)
    seen = row_mask(window_B, sinks_B, i * block + within, j * block + within)[:, None, None]
    s = jnp.einsum("BKGTH,BKUH->BKGTU", q_BKGCH, k_BKCH, preferred_element_type=jnp.float32)
    return jnp.where(seen, s * scale, MASKED), seen


def _forward(q_BTNH, k_BTKH, v_BTKE, window_B, sinks_B, scale, block):
    """(output [B, T, N, E] in q's dtype, log-sum-exp of each query [B, T, N] fp32)."""
    # Make the masks' inputs depend on the queries: inside the model's differentiated layer scan,
    # JAX otherwise hoists every layer-invariant value out of the loop, and with a constant W and
    # S (full attention) that is the whole [B, K, G, block, block] mask and its MASKED fill,
    # materialized before the loop instead of fused into the scores (docs/benchmarks.md, "The
    # training step's backward on the CPU"). q itself passes by, free to fuse.
    window_B, sinks_B, _ = jax.lax.optimization_barrier((window_B, sinks_B, q_BTNH))
    layout = _Blocks(q_BTNH, k_BTKH, block)
    k_blocks, v_blocks = layout.keys(k_BTKH), layout.keys(v_BTKE)
    # the widest row decides which key blocks run: one reduction over the batch per call
    widest = (jnp.max(window_B), jnp.max(sinks_B))

    def query_block(_, inputs):
        i, q_BKGCH = inputs

        def update(carry, j, k_BKCH, v_BKCE):
            s, _ = _scores(q_BKGCH, k_BKCH, i, j, block, scale, window_B, sinks_B)
            return online_softmax_step(carry, s, v_BKCE)

        shape = q_BKGCH.shape[:-1]
        init = (
            jnp.full(shape, MASKED, jnp.float32),
            jnp.zeros(shape, jnp.float32),
            jnp.zeros((*shape, v_blocks.shape[-1]), jnp.float32),
        )
        # under shard_map the skipped-block branch must return the carry's type
        init = tuple(vary_like(x, (q_BKGCH, k_blocks, v_blocks)) for x in init)
        row_max, denom, acc = _fold_needed_key_blocks(
            update, init, i, layout, (k_blocks, v_blocks), widest
        )
        out = (acc / denom[..., None]).astype(q_BKGCH.dtype)
        return None, (out, row_max + jnp.log(denom))

    inputs = (jnp.arange(layout.n), layout.queries(q_BTNH))
    _, (out, lse) = jax.lax.scan(query_block, None, inputs)
    return layout.from_queries(out), layout.from_query_rows(lse)


def online_softmax_step(carry, s, v_BKCE):
    """Fold one key block's scores into the running (row max, denominator, weighted values)."""
    row_max, denom, acc = carry
    new_max = jnp.maximum(row_max, s.max(-1))
    p = jnp.exp(s - new_max[..., None])
    correction = jnp.exp(row_max - new_max)
    pv = jnp.einsum(
        "BKGTU,BKUE->BKGTE", p.astype(v_BKCE.dtype), v_BKCE, preferred_element_type=jnp.float32
    )
    return new_max, denom * correction + p.sum(-1), acc * correction[..., None] + pv


def _attention_fwd(q_BTNH, k_BTKH, v_BTKE, window_B, sinks_B, scale, block):
    out, lse = _forward(q_BTNH, k_BTKH, v_BTKE, window_B, sinks_B, scale, block)
    return out, (q_BTNH, k_BTKH, v_BTKE, window_B, sinks_B, out, lse)


def _attention_bwd(scale, block, residuals, d_out_BTNE):
    """Per query block, the visible key blocks once more: p from the saved log-sum-exp, then
    dv = p^T do, ds = p (do v^T - rowsum(do o)), dq = ds k, dk = ds^T q (scaled)."""
    q_BTNH, k_BTKH, v_BTKE, window_B, sinks_B, out_BTNE, lse_BTN = residuals
    block = min(block, BACKWARD_BLOCK)
    layout = _Blocks(q_BTNH, k_BTKH, block)
    q_blocks, k_blocks, v_blocks = (
        layout.queries(q_BTNH), layout.keys(k_BTKH), layout.keys(v_BTKE)
    )  # fmt: skip
    do_blocks = layout.queries(d_out_BTNE)
    # rowsum(do * o): the softmax's own term of every query's gradient, in fp32
    delta = jnp.einsum("BTNE,BTNE->BTN", d_out_BTNE, out_BTNE, preferred_element_type=jnp.float32)
    widest = (jnp.max(window_B), jnp.max(sinks_B))
    varying = (q_BTNH, k_BTKH, v_BTKE, d_out_BTNE)

    def query_block(dkv, inputs):
        i, q_BKGCH, do_BKGCE, lse_BKGC, delta_BKGC = inputs

        def grads(carry, j, k_BKCH, v_BKCE):
            dq, dk, dv = carry
            s, seen = _scores(q_BKGCH, k_BKCH, i, j, block, scale, window_B, sinks_B)
            # where: a row that sees no key at all (W = S = 0) gets no gradient
            p = jnp.where(seen, jnp.exp(s - lse_BKGC[..., None]), 0.0)
            dp = jnp.einsum(
                "BKGTE,BKUE->BKGTU", do_BKGCE, v_BKCE, preferred_element_type=jnp.float32
            )
            ds = p * (dp - delta_BKGC[..., None]) * scale
            dq = dq + jnp.einsum("BKGTU,BKUH->BKGTH", ds, k_BKCH.astype(jnp.float32))
            # only this key block's slice of dk and dv is touched (in place): skipped blocks
            # cost nothing, so a windowed backward stays O(T (W + S))
            dk = dk.at[j].add(jnp.einsum("BKGTU,BKGTH->BKUH", ds, q_BKGCH.astype(jnp.float32)))
            dv = dv.at[j].add(jnp.einsum("BKGTU,BKGTE->BKUE", p, do_BKGCE.astype(jnp.float32)))
            return dq, dk, dv

        dq0 = vary_like(jnp.zeros(q_BKGCH.shape, jnp.float32), varying)
        dq, *dkv = _fold_needed_key_blocks(
            grads, (dq0, *dkv), i, layout, (k_blocks, v_blocks), widest
        )
        return tuple(dkv), dq

    dkv0 = tuple(vary_like(jnp.zeros(x.shape, jnp.float32), varying) for x in (k_blocks, v_blocks))
    inputs = (
        jnp.arange(layout.n), q_blocks, do_blocks, layout.query_rows(lse_BTN),
        layout.query_rows(delta),
    )  # fmt: skip
    (dk, dv), dq = jax.lax.scan(query_block, dkv0, inputs)
    return (
        layout.from_queries(dq).astype(q_BTNH.dtype),
        layout.from_keys(dk).astype(k_BTKH.dtype),
        layout.from_keys(dv).astype(v_BTKE.dtype),
        None,
        None,
    )


_attention.defvjp(_attention_fwd, _attention_bwd)
