"""The Qwen2 decoder in mode "full" equals transformers.Qwen2ForCausalLM."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from shared import hf_logits, random_ids, save_tiny_qwen2, tiny_config

import ahn_jax
from ahn_jax.model.transformer import init_model

PARITY_CASES = {
    "untied_gqa2": dict(tie_word_embeddings=False, num_attention_heads=4, num_key_value_heads=2),
    "tied_gqa1": dict(tie_word_embeddings=True, num_attention_heads=4, num_key_value_heads=4),
    "untied_gqa4_theta1e6": dict(num_attention_heads=8, num_key_value_heads=2, rope_theta=1e6),
    "tied_gqa4_eps1e-5": dict(
        tie_word_embeddings=True, num_attention_heads=4, num_key_value_heads=1, rms_norm_eps=1e-5
    ),
    "gqa2_theta500_eps1e-3_3layers": dict(
        num_hidden_layers=3, rope_theta=500.0, rms_norm_eps=1e-3, num_key_value_heads=2
    ),
}


@pytest.mark.parametrize("case", sorted(PARITY_CASES))
def test_logits_match_transformers(tmp_path, case):
    hf_model = save_tiny_qwen2(tmp_path, **PARITY_CASES[case])
    model = ahn_jax.from_pretrained(tmp_path)
    ids = random_ids(hf_model.config.vocab_size, shape=(2, 19))
    logits = model(ids, mode="full")
    assert logits.dtype == jnp.float32 and logits.shape == (2, 19, hf_model.config.vocab_size)
    np.testing.assert_allclose(np.asarray(logits), hf_logits(hf_model, ids), atol=1e-4, rtol=0)


def test_long_sequence_uses_the_blocked_path_and_matches(tmp_path):
    from kernels.window_attention import BLOCK

    hf_model = save_tiny_qwen2(tmp_path, num_hidden_layers=1)
    ids = random_ids(hf_model.config.vocab_size, shape=(1, BLOCK + 77))
    logits = ahn_jax.from_pretrained(tmp_path)(ids)
    np.testing.assert_allclose(np.asarray(logits), hf_logits(hf_model, ids), atol=1e-4, rtol=0)


def test_sharded_save_loads_the_same_model(tmp_path):
    hf_model = save_tiny_qwen2(tmp_path, max_shard_size="40KB", num_hidden_layers=3)
    assert (tmp_path / "model.safetensors.index.json").is_file()
    assert len(list(tmp_path.glob("model-*.safetensors"))) > 1
    ids = random_ids(hf_model.config.vocab_size)
    logits = ahn_jax.from_pretrained(tmp_path)(ids)
    np.testing.assert_allclose(np.asarray(logits), hf_logits(hf_model, ids), atol=1e-4, rtol=0)


def test_explicit_positions_match_transformers_position_ids(tmp_path):
    """A trimmed cache keeps absolute positions: RoPE must follow the positions given."""
    hf_model = save_tiny_qwen2(tmp_path)
    ids = random_ids(hf_model.config.vocab_size, shape=(2, 9))
    # Non-uniform gaps: a constant offset would not change RoPE attention at all.
    positions = np.stack([np.r_[0:3, 40:46], np.arange(9) * 3 + 1000]).astype(np.int32)
    logits = ahn_jax.from_pretrained(tmp_path)(ids, positions=positions)
    reference = hf_logits(hf_model, ids, position_ids=positions)
    np.testing.assert_allclose(np.asarray(logits), reference, atol=1e-4, rtol=0)
    default = ahn_jax.from_pretrained(tmp_path)(ids)
    assert not np.allclose(np.asarray(default), reference, atol=1e-3)


def test_bf16_compute_stays_close_to_fp32(tmp_path):
    hf_model = save_tiny_qwen2(tmp_path)
    ids = random_ids(hf_model.config.vocab_size)
    logits = np.asarray(ahn_jax.from_pretrained(tmp_path, dtype=jnp.bfloat16)(ids))
    assert logits.dtype == np.float32
    reference = hf_logits(hf_model, ids)
    rel = np.linalg.norm(logits - reference) / np.linalg.norm(reference)
    assert rel < 2e-2, rel


@pytest.mark.parametrize("policy", ["full", "dots", "dots_no_batch"])
def test_remat_policies_keep_logits_and_gradients(policy):
    ids = random_ids(64, shape=(2, 7))
    plain = init_model(tiny_config())
    remat = init_model(tiny_config(remat_policy=policy))

    def loss(model):
        return jnp.mean(jnp.square(model(ids)))

    from flax import nnx

    np.testing.assert_allclose(np.asarray(remat(ids)), np.asarray(plain(ids)), atol=1e-6)
    grads_plain = nnx.grad(loss)(plain)
    grads_remat = nnx.grad(loss)(remat)
    for a, b in zip(jax.tree.leaves(grads_plain), jax.tree.leaves(grads_remat), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)


def test_next_token_gradients_of_every_weight_match_torch_autograd(tmp_path):
    """The base's pretraining gradient (full attention, every weight) equals torch's backward
    through transformers' model: the layer scan, the blocked attention's written-out backward
    (T = 150 spans two of its 128-token backward blocks) and the MLP's recomputed gate."""
    import torch
    from flax import nnx

    from ahn_jax.checkpoints.hf_naming import tensor_maps
    from ahn_jax.checkpoints.pretrained import param_shapes

    hf_model = save_tiny_qwen2(tmp_path, num_key_value_heads=2)
    model = ahn_jax.from_pretrained(tmp_path)
    ids = random_ids(hf_model.config.vocab_size, shape=(2, 150))

    def loss(model):
        logits = model(ids, mode="full")[:, :-1]
        picked = jnp.take_along_axis(jax.nn.log_softmax(logits), ids[:, 1:, None], axis=-1)
        return -jnp.mean(picked)

    ours = nnx.to_pure_dict(nnx.grad(loss)(model))
    logits = hf_model(torch.tensor(ids, dtype=torch.long)).logits[:, :-1]
    torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), torch.tensor(ids[:, 1:], dtype=torch.long).reshape(-1)
    ).backward()
    theirs = dict(hf_model.named_parameters())
    for m in tensor_maps(model.config, param_shapes(model.config)):
        grad = ours
        for key in m.path:
            grad = grad[key]
        grad = np.asarray(grad if m.layer is None else grad[m.layer])
        want = theirs[m.hf_name].grad.numpy()
        # each tensor against its own scale: the attention projections' gradients are ~1e-5
        scale = np.abs(want).max()
        np.testing.assert_allclose(
            m.to_hf(grad), want, atol=1e-4 * scale, rtol=0, err_msg=m.hf_name
        )


def test_depth_does_not_unroll():
    """Layers are scanned: the compiled program has one layer body whatever the depth."""
    from flax import nnx

    from ahn_jax.model.transformer import forward

    ids = jnp.asarray(random_ids(64, shape=(1, 5)))
    pos = jnp.broadcast_to(jnp.arange(5), ids.shape)
    sizes = []
    for layers in (2, 8):
        graphdef, state = nnx.split(init_model(tiny_config(num_layers=layers)))
        hlo = forward.lower(graphdef, state, ids, pos, jnp.int32(0), jnp.int32(0)).as_text()
        sizes.append(hlo.count("dot_general"))
    assert sizes[0] == sizes[1]


def test_bad_calls_have_clear_errors():
    model = init_model(tiny_config())
    with pytest.raises(ValueError, match="mode must be one of"):
        model(random_ids(64), mode="sliding")
    with pytest.raises(ValueError, match=r"input_ids must be \[batch, length\]"):
        model(np.zeros((5,), np.int32))
    with pytest.raises(ValueError, match="positions must have the shape"):
        model(random_ids(64, shape=(2, 4)), positions=np.arange(4))
