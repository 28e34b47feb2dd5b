"""The Pallas sink + window attention (kernels/window_attention/pallas_window.py, interpret mode on
CPU) equals the dense reference forward and backward, for traced and per-row W and S with one
compile; skipped key blocks are exactly the invisible ones and are never read; and it lowers
through Mosaic for TPU (v5e, v6e), forward and backward."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from checks import FP32_TOL, assert_close

from kernels.common import pallas_mode, tpu_aot
from kernels.window_attention import (
    causal_attention,
    naive,
    pallas_window,
    pallas_window_common,
    sink_window_attention,
    visible,
)

BLOCK = 8  # tiny blocks: T = 45 is 6 query blocks x 6 key blocks, most windows skip some
T = 45  # not a multiple of the block: the last block is padded
H = 8


def make_qkv(T=T, B=2, N=4, K=2, seed=0, dtype=jnp.float32):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((B, T, N, H))
    k, v = rng.standard_normal((2, B, T, K, H))
    return tuple(jnp.asarray(a, dtype) for a in (q, k, v))


def loss_of(fn):
    # sin: the cotangent dO varies per element (a plain sum would make dO constant)
    return lambda q, k, v, *a: jnp.sum(jnp.sin(fn(q, k, v, *a).astype(jnp.float32)))


def pallas(q, k, v, window, sinks):
    return pallas_window.attention(q, k, v, window, sinks, H**-0.5, block_q=BLOCK, block_k=BLOCK)


def reference(q, k, v, window, sinks):
    return naive.reference(q, k, v, window, sinks, H**-0.5)


def value_and_grads(fn):
    return jax.value_and_grad(loss_of(fn), argnums=(0, 1, 2))


def check_against_reference(got, want, tol=FP32_TOL, name=""):
    (loss, grads), (ref_loss, ref_grads) = got, want
    assert_close(loss, ref_loss, tol, name=f"{name} loss")
    for d, a, b in zip(("dq", "dk", "dv"), grads, ref_grads, strict=True):
        assert_close(a, b, tol, name=f"{name} {d}")


# W and S at the block edges (W = block - 1, block, block + 1; S = block, block + 1), S = 0, W >= T,
# a one-token window, sinks past the window and past the sequence; T = 45 (padded to 48), GQA
# N = 4, K = 2. With blocks of 8, W = 8 m + 2 is the smallest window that reaches the last key of
# the key block m + 1 blocks back (W = 8 m + 1 just misses it): 10 and 2 put a needed block on the
# edge.
CASES = [(8, 8), (7, 0), (9, 3), (10, 0), (2, 16), (16, 0), (9, 17), (45, 0), (100, 5), (1, 0),
         (3, 50), (24, 17)]  # fmt: skip


def test_equals_reference_forward_and_backward_with_one_compile():
    traces = []

    @jax.jit
    def ours(q, k, v, window, sinks):
        traces.append(1)  # runs once per trace: the count of compiles
        return value_and_grads(pallas)(q, k, v, window, sinks)

    want_fn = jax.jit(value_and_grads(reference))
    q, k, v = make_qkv()
    for W, S in CASES:
        got = ours(q, k, v, jnp.int32(W), jnp.int32(S))
        check_against_reference(got, want_fn(q, k, v, W, S), name=f"W={W} S={S}")
        out = pallas(q, k, v, W, S)  # and the plain forward, eagerly with Python ints
        assert_close(out, reference(q, k, v, W, S), name=f"out W={W} S={S}")
    assert len(traces) == 1  # W and S are scalar-prefetch operands: new values never recompile
    assert ours._cache_size() == 1


def test_logsumexp_and_gqa_layouts():
    """The saved logsumexp is the reference's; MQA (K = 1) and K = N work like GQA."""
    for N, K in ((4, 1), (2, 2)):
        q, k, v = make_qkv(T=20, N=N, K=K)
        out, lse = pallas_window.forward(q, k, v, 6, 2, 0.3, block_q=BLOCK, block_k=BLOCK)
        assert_close(out, naive.reference(q, k, v, 6, 2, 0.3), name=f"N={N} K={K}")
        pos = jnp.arange(20)
        scores = jnp.einsum("btnh,bsnh->bnts", q, jnp.repeat(k, N // K, axis=2)) * 0.3
        scores = jnp.where(visible(pos[:, None], pos[None, :], 6, 2), scores, -jnp.inf)
        assert_close(lse, jax.nn.logsumexp(scores, axis=-1).transpose(0, 2, 1), name="lse")


def test_rows_with_their_own_window_and_sinks_equal_each_row_alone():
    windows, sinks = (8, 1, 45, 9, 16), (8, 0, 0, 20, 3)
    q, k, v = make_qkv(B=len(windows), seed=1)
    W_B, S_B = jnp.asarray(windows, jnp.int32), jnp.asarray(sinks, jnp.int32)
    out = sink_window_attention(q, k, v, window=W_B, sinks=S_B, impl="pallas", block_size=BLOCK)
    grads = jax.grad(loss_of(pallas), argnums=(0, 1, 2))(q, k, v, W_B, S_B)
    alone = jax.jit(pallas)  # one compile for every single-row call
    for b, (W, S) in enumerate(zip(windows, sinks, strict=True)):
        row = (q[b : b + 1], k[b : b + 1], v[b : b + 1])
        assert_close(out[b : b + 1], alone(*row, W, S), name=f"row {b}: W={W} S={S}")
        # the summed loss separates over rows: row b's gradient is its own reference gradient
        want = jax.grad(loss_of(reference), argnums=(0, 1, 2))(*row, W, S)
        for d, a, w in zip(("dq", "dk", "dv"), grads, want, strict=True):
            assert_close(a[b : b + 1], w, name=f"row {b} {d}")


def test_bf16_within_fla_thresholds():
    """bf16 inputs against the fp32 reference on the same (bf16-rounded) values, forward and
    backward, at fla's parallel-attention thresholds (0.005 RMS-relative for o, dq, dk, dv)."""
    q, k, v = make_qkv(dtype=jnp.bfloat16)
    out = pallas(q, k, v, 9, 3)
    assert out.dtype == jnp.bfloat16
    upcast = [x.astype(jnp.float32) for x in (q, k, v)]
    assert_close(out, reference(*upcast, 9, 3), tol=0.005, name="o")
    got = jax.grad(loss_of(pallas), argnums=(0, 1, 2))(q, k, v, 9, 3)
    want = jax.grad(loss_of(reference), argnums=(0, 1, 2))(*upcast, 9, 3)
    for d, a, b, x in zip(("dq", "dk", "dv"), got, want, (q, k, v), strict=True):
        assert a.dtype == x.dtype
        assert_close(a, b, tol=0.005, name=d)


def test_skipped_key_blocks_are_never_read():
    """NaN in blocks the skipping rule leaves out: with W = 8, S = 0 and blocks of 8, query block
    i reads key blocks i - 1 and i only. NaN values in key block 0 reach only query blocks 0 and
    1 (forward and dq), NaN cotangents in query block 5 only key blocks 4 and 5 (dk, dv): had any
    kernel computed a skipped block, 0 * NaN would spread the NaN."""
    q, k, v = make_qkv(T=48, seed=2)
    v_nan = v.at[:, :8].set(jnp.nan)
    # cotangents: NaN on query block 5 for the kernels; the reference, which computes every pair,
    # gets 0 there instead (those queries see keys >= 33 only, so dk, dv of keys < 32 are the same)
    zeroed = jnp.ones((2, 48, 4, H)).at[:, 40:].set(0.0)
    weights = zeroed.at[:, 40:].set(jnp.nan)

    def loss(fn, w):
        return lambda q, k, v: jnp.sum(fn(q, k, v, 8, 0) * w)

    out = pallas(q, k, v_nan, 8, 0)
    assert_close(out[:, 16:], reference(q, k, v, 8, 0)[:, 16:], name="out")
    dq = jax.grad(loss(pallas, jnp.ones_like(weights)))(q, k, v_nan)
    want_dq = jax.grad(loss(reference, jnp.ones_like(weights)))(q, k, v)
    assert_close(dq[:, 16:], want_dq[:, 16:], name="dq")
    _, dk, dv = jax.grad(loss(pallas, weights), argnums=(0, 1, 2))(q, k, v)
    _, want_dk, want_dv = jax.grad(loss(reference, zeroed), (0, 1, 2))(q, k, v)
    assert_close(dk[:, :32], want_dk[:, :32], name="dk")
    assert_close(dv[:, :32], want_dv[:, :32], name="dv")


@pytest.mark.parametrize("bq, bk", [(8, 8), (8, 16), (16, 8), (24, 16)])
def test_block_rule_is_exactly_the_visible_pairs_and_index_maps_stay_on_used_blocks(bq, bk):
    """`_needed` holds iff the block pair has a visible (query, key); a skipped step's clamped
    block index (the index maps) is a block the same query (key) block does use, so the pipeline
    keeps it and copies nothing new."""
    n = 48
    nq, nk = n // bq, n // bk
    pos = np.arange(n)
    for W, S in [(1, 0), (2, 0), (8, 0), (9, 3), (10, 16), (17, 8), (18, 1), (5, 30), (48, 0),
                 (0, 0), (0, 9)]:  # fmt: skip
        mask = np.asarray(visible(pos[:, None], pos[None, :], W, S))
        for i in range(nq):
            for j in range(nk):
                any_visible = mask[i * bq : (i + 1) * bq, j * bk : (j + 1) * bk].any()
                needed = bool(pallas_window_common.needed(i, j, W, S, bq, bk))
                if W >= 1:  # W = 0 (no band) may compute a block whose keys are all masked
                    assert needed == any_visible, (W, S, i, j)
                else:
                    assert needed or not any_visible, (W, S, i, j)
                jj = int(pallas_window_common.key_block(i, j, W, S, bq, bk))
                assert 0 <= jj < nk and pallas_window_common.needed(i, jj, W, S, bq, bk)
                ii = int(pallas_window_common.query_block(i, j, W, S, bq, bk, nq))
                if any(pallas_window_common.needed(r, j, W, S, bq, bk) for r in range(nq)):
                    assert 0 <= ii < nq and pallas_window_common.needed(ii, j, W, S, bq, bk)


# causal_attention's impl argument


def test_causal_attention_pallas_covers_every_length_and_plain_causal():
    q, k, v = make_qkv(T=21)
    want = naive.reference(q, k, v, 21, 0, H**-0.5)
    assert_close(causal_attention(q, k, v, impl="pallas"), want, name="window=None, block 512")
    got = causal_attention(q, k, v, block=BLOCK, impl="pallas", window=5, sinks=jnp.int32(2))
    assert_close(got, naive.reference(q, k, v, 5, 2, H**-0.5), name="W=5 S=2")
    with pytest.raises(ValueError, match=r"impl must be one of \('blocked', 'pallas'\)"):
        causal_attention(q, k, v, impl="splash")


def test_blocks_are_checked():
    with pytest.raises(ValueError, match="block_q must be a positive multiple of 8"):
        pallas_window.blocks_for(100, 12, 8)
    assert pallas_window.blocks_for(45, 128, 128) == (48, 48, 48)  # one block of T rounded to 8
    assert pallas_window.blocks_for(200, 128, 256) == (128, 256, 256)
    with pallas_mode.compiled_for_tpu():
        with pytest.raises(ValueError, match="on TPU the query block must be a multiple of 128"):
            pallas_window.blocks_for(256, 64, 64)
        assert pallas_window.blocks_for(40, 64, 64) == (40, 40, 40)


# Mosaic lowering for real TPU generations (nothing runs)


def forward_and_backward(q, k, v, windows, sinks):
    def loss(q, k, v):
        out = pallas_window.attention(q, k, v, windows, sinks, 128**-0.5)
        return jnp.sum(out.astype(jnp.float32))

    return jax.value_and_grad(loss, argnums=(0, 1, 2))(q, k, v)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("topology", tpu_aot.TOPOLOGIES)
def test_compiles_for_tpu_forward_and_backward(topology, dtype):
    """Blocks of 128 over T = 512 with per-row W and S as arguments: the forward, dq and dk/dv
    kernels lower through Mosaic (tiling, SMEM scalar prefetch, VMEM)."""
    B, T, N, K, D = 2, 512, 4, 2, 128
    shapes = [((B, T, N, D), dtype), ((B, T, K, D), dtype), ((B, T, K, D), dtype)]
    shapes += [((B,), jnp.int32), ((B,), jnp.int32)]
    lowered, compiled = tpu_aot.compile_for(topology, forward_and_backward, *shapes)
    assert lowered.as_text().count("tpu_custom_call") == 3  # forward, dq, dk/dv
    assert compiled.cost_analysis()["flops"] > 0
