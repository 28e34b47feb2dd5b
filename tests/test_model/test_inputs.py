"""What the model's public calls do with bad arguments: one error naming the argument, where XLA
would compute something else without a word (NaN rows, a truncated window, a cache that turns
into a sliding window)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from shared import tiny_config

from ahn_jax.model.transformer import init_model

W, S = 4, 1


@pytest.fixture(scope="module")
def model():
    return init_model(tiny_config(ahn_type="gdn"), seed=0)


@pytest.fixture(scope="module")
def ids():
    return np.random.default_rng(0).integers(0, 64, (2, 10)).astype(np.int32)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda m, ids: m(ids + 64), r"input_ids holds ids outside the vocabulary \[0, 64\)"),
        (lambda m, ids: m(ids - 100), r"outside the vocabulary .*min -"),
        (lambda m, ids: m(ids.astype(np.float32)), "input_ids must hold integer token ids"),
        (lambda m, ids: m(ids[:, :0]), r"input_ids must be \[batch, length\] with no empty"),
        (lambda m, ids: m(ids, mode="swa", window=2.5), "window must be an integer"),
        (lambda m, ids: m(ids, mode="swa", window=True), "window must be an integer"),
        (lambda m, ids: m(ids, mode="swa", window=W, sinks=-1), "sinks must be >= 0"),
        (lambda m, ids: m(ids, mode="full", window=W), "mode 'full' attends the whole context"),
        (lambda m, ids: m(ids, mode="full", sinks=2), "mode 'full' attends the whole context"),
    ],
)
def test_the_forward_names_a_bad_argument(model, ids, call, message):
    with pytest.raises(ValueError, match=message):
        call(model, ids)


def test_the_traced_entry_points_check_the_mode(model, ids):
    positions = jnp.broadcast_to(jnp.arange(10), ids.shape)
    with pytest.raises(ValueError, match="mode must be one of"):
        model.logits(ids, positions, mode="bogus")
    with pytest.raises(ValueError, match="mode 'swa' needs window=W"):
        model.hidden_states(ids, positions, mode="swa")
    base = init_model(tiny_config(), seed=0)
    with pytest.raises(ValueError, match="mode 'ahn' needs AHN weights"):
        base.logits(ids, positions, mode="ahn", window=W)
    # a user's own jit: traced windows are checked for their dtype only
    traced = jax.jit(lambda w: model.logits(ids, positions, mode="swa", window=w))
    assert traced(jnp.int32(W)).shape == (2, 10, 64)


def test_numpy_integers_count_and_bools_do_not(model):
    cache = model.init_cache(np.int64(2), window=np.int64(W), sinks=np.int32(S))
    assert (cache.window, cache.sinks, cache.batch_size) == (W, S, 2)
    with pytest.raises(ValueError, match="window must be an integer >= 1, got True"):
        model.init_cache(2, window=True)


def test_a_full_mode_cache_holds_its_window_and_no_more(model, ids):
    """It held `window` tokens and then dropped the oldest: a sliding window, silently."""
    with pytest.raises(ValueError, match="its cache takes no sinks"):
        model.init_cache(2, window=8, sinks=2, mode="full")
    cache = model.init_cache(2, window=10, mode="full")
    logits, cache = model.prefill(ids, cache, all_logits=True)
    np.testing.assert_allclose(logits, model(ids), atol=1e-5)  # exact up to the window
    with pytest.raises(ValueError, match=r"reach 11 tokens, but mode 'full' holds .* = 10"):
        model.decode_step(np.zeros(2, np.int32), cache)
    with pytest.raises(ValueError, match=r"reach 11 tokens"):
        model.prefill(ids[:, :1], cache)


def test_decode_past_max_length_is_refused_for_full_attention_layers():
    """Layers kept as full attention hold max_length positions; decoding past them dropped the
    first position of those layers without an error (prefill already refused)."""
    model = init_model(tiny_config(ahn_type="gdn", full_attention_layers=(1,)), seed=0)
    cache = model.init_cache(1, window=W, sinks=S, max_length=4)
    _, cache = model.prefill(np.ones((1, 3), np.int32), cache)
    _, cache = model.decode_step(np.ones(1, np.int32), cache)
    with pytest.raises(ValueError, match=r"reach 5 tokens, but the full-attention layers"):
        model.decode_step(np.ones(1, np.int32), cache)


@pytest.mark.parametrize(
    "tokens, message",
    [
        (np.ones(1, np.int32), "token_ids has 1 rows, the cache 2"),
        (np.ones((2, 2), np.int32), r"token_ids must be \[batch\]"),
        (np.int32(1), r"token_ids must be \[batch\]"),
        (np.full(2, 64, np.int32), "token_ids holds ids outside the vocabulary"),
    ],
)
def test_decode_step_names_bad_tokens(model, tokens, message):
    cache = model.init_cache(2, window=W, sinks=S)
    with pytest.raises(ValueError, match=message):
        model.decode_step(tokens, cache)


def test_prefill_names_bad_lengths_and_chunks(model, ids):
    cache = model.init_cache(2, window=W, sinks=S)
    with pytest.raises(ValueError, match="lengths must give each of the 2 rows an integer"):
        model.prefill(ids, cache, lengths=[3.5, 2])
    with pytest.raises(ValueError, match="chunk_size must be an integer >= 1, got 0"):
        model.prefill(ids, cache, chunk_size=0)


def test_a_donated_decode_step_spends_the_cache_and_computes_the_same(model, ids):
    cache = model.init_cache(2, window=W, sinks=S)
    _, cache = model.prefill(ids, cache)
    kept, _ = model.decode_step(jnp.ones(2, jnp.int32), cache)
    donated, after = model.decode_step(jnp.ones(2, jnp.int32), cache, donate=True)
    np.testing.assert_array_equal(kept, donated)
    assert cache.k[0].is_deleted() and not after.k[0].is_deleted()


def test_the_per_layer_copy_for_decoding_says_what_it_is_not_for(model, ids, tmp_path):
    from ahn_jax.model.layerwise import unstack_layers

    layerwise = unstack_layers(model)
    for call in (lambda: layerwise(ids), lambda: layerwise.save_ahn(tmp_path / "ahn")):
        with pytest.raises(ValueError, match="needs the model itself: this copy's layers are cut"):
            call()
    cache = layerwise.init_cache(2, window=W, sinks=S)
    np.testing.assert_allclose(
        layerwise.prefill(ids, cache)[0], model.prefill(ids, cache)[0], atol=1e-6
    )


def test_decode_step_inside_a_users_jit_checks_shapes_only(model):
    """The room check reads the rows' lengths from the device: inside a jit they are traced."""
    cache = model.init_cache(2, window=8, mode="full")
    step = jax.jit(lambda tokens, cache: model.decode_step(tokens, cache))
    logits, cache = step(jnp.ones(2, jnp.int32), cache)
    assert logits.shape == (2, 64) and int(cache.length[0]) == 1
