"""HF safetensors <-> Orbax conversion: bit-exact round trips, bf16, and clear errors."""

import json
import warnings

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from safetensors.numpy import load_file, save_file
from shared import hf_logits, random_ids, save_tiny_qwen2
from transformers import Qwen2ForCausalLM

import ahn_jax
from ahn_jax import convert as convert_cli
from ahn_jax.checkpoints import convert, converted
from ahn_jax.checkpoints.hf_naming import CheckpointMismatchError
from ahn_jax.checkpoints.safetensors_io import CheckpointFormatError, tensor_index


def _all_tensors(directory):
    tensors = {}
    for path in sorted(directory.glob("*.safetensors")):
        tensors.update(load_file(path))
    return tensors


def _assert_bit_identical(a_dir, b_dir):
    a, b = _all_tensors(a_dir), _all_tensors(b_dir)
    assert sorted(a) == sorted(b)
    for name in a:
        assert a[name].dtype == b[name].dtype, name
        assert a[name].shape == b[name].shape, name
        assert a[name].tobytes() == b[name].tobytes(), name


@pytest.mark.parametrize("tied", [False, True])
def test_round_trip_is_bit_exact(tmp_path, tied):
    save_tiny_qwen2(tmp_path / "hf", tie_word_embeddings=tied)
    assert (
        convert_cli.main(["--hf_dir", str(tmp_path / "hf"), "--out", str(tmp_path / "ckpt")]) == 0
    )
    assert (
        convert_cli.main(
            ["--to_hf", "--ckpt", str(tmp_path / "ckpt"), "--out", str(tmp_path / "back")]
        )
        == 0
    )
    _assert_bit_identical(tmp_path / "hf", tmp_path / "back")
    original = json.loads((tmp_path / "hf" / "config.json").read_text())
    # transformers 5 saved only its own keys; the export adds the 4.x ones from them
    legacy = {"rope_theta": original["rope_parameters"]["rope_theta"], "torch_dtype": "float32"}
    assert "rope_theta" not in original and "torch_dtype" not in original
    assert json.loads((tmp_path / "back" / "config.json").read_text()) == {**original, **legacy}


def test_sharded_round_trip_and_sharded_export(tmp_path):
    hf_model = save_tiny_qwen2(tmp_path / "hf", max_shard_size="40KB", num_hidden_layers=3)
    convert.hf_to_orbax(tmp_path / "hf", tmp_path / "ckpt")
    convert.orbax_to_hf(tmp_path / "ckpt", tmp_path / "back", max_shard_bytes=50_000)
    assert (tmp_path / "back" / "model.safetensors.index.json").is_file()
    assert len(list((tmp_path / "back").glob("model-*-of-*.safetensors"))) > 1
    _assert_bit_identical(tmp_path / "hf", tmp_path / "back")
    # transformers itself reads our export
    from transformers import Qwen2ForCausalLM

    reloaded = Qwen2ForCausalLM.from_pretrained(tmp_path / "back").eval()
    ids = random_ids(hf_model.config.vocab_size)
    np.testing.assert_array_equal(hf_logits(reloaded, ids), hf_logits(hf_model, ids))


def test_orbax_checkpoint_loads_the_same_model(tmp_path):
    hf_model = save_tiny_qwen2(tmp_path / "hf", tie_word_embeddings=True)
    convert.hf_to_orbax(tmp_path / "hf", tmp_path / "ckpt")
    ids = random_ids(hf_model.config.vocab_size)
    logits = ahn_jax.from_pretrained(tmp_path / "ckpt")(ids)
    np.testing.assert_allclose(np.asarray(logits), hf_logits(hf_model, ids), atol=1e-4, rtol=0)


def test_bf16_checkpoint(tmp_path):
    hf_model = save_tiny_qwen2(tmp_path / "hf", dtype=torch.bfloat16)
    assert {i.dtype.name for i in tensor_index(tmp_path / "hf").values()} == {"bfloat16"}
    # default keeps bf16, and the round trip is bit-exact in bf16
    convert.hf_to_orbax(tmp_path / "hf", tmp_path / "ckpt_bf16")
    convert.orbax_to_hf(tmp_path / "ckpt_bf16", tmp_path / "back")
    _assert_bit_identical(tmp_path / "hf", tmp_path / "back")
    # widening to fp32 is exact: the fp32 model equals transformers run in fp32 on those weights
    assert (
        convert_cli.main(
            [
                "--hf_dir",
                str(tmp_path / "hf"),
                "--out",
                str(tmp_path / "ckpt_f32"),
                "--dtype",
                "float32",
            ]
        )
        == 0
    )
    model = ahn_jax.from_pretrained(tmp_path / "ckpt_f32")
    assert model.embed_tokens[...].dtype == jnp.float32
    # exported, its config.json names the dtype of the tensors written, not the source's:
    # transformers loads dtype "auto" as the config says
    convert.orbax_to_hf(tmp_path / "ckpt_f32", tmp_path / "back_f32")
    assert {i.dtype.name for i in tensor_index(tmp_path / "back_f32").values()} == {"float32"}
    exported = json.loads((tmp_path / "back_f32" / "config.json").read_text())
    assert (exported["dtype"], exported["torch_dtype"]) == ("float32", "float32")
    ids = random_ids(hf_model.config.vocab_size)
    reference = hf_logits(hf_model.float(), ids)
    np.testing.assert_allclose(np.asarray(model(ids)), reference, atol=1e-4, rtol=0)


def test_pickle_checkpoints_are_refused(tmp_path, capsys):
    save_tiny_qwen2(tmp_path / "hf")
    (tmp_path / "hf" / "model.safetensors").unlink()
    (tmp_path / "hf" / "pytorch_model.bin").write_bytes(b"not really a pickle")
    with pytest.raises(CheckpointFormatError, match=r"pytorch_model\.bin.*safetensors only"):
        ahn_jax.from_pretrained(tmp_path / "hf")
    assert convert_cli.main(["--hf_dir", str(tmp_path / "hf"), "--out", str(tmp_path / "o")]) == 2
    assert "pytorch_model.bin" in capsys.readouterr().err


def test_mismatch_names_every_bad_tensor(tmp_path):
    save_tiny_qwen2(tmp_path / "hf", num_hidden_layers=2)
    tensors = load_file(tmp_path / "hf" / "model.safetensors")
    del tensors["model.layers.1.mlp.up_proj.weight"]
    del tensors["model.norm.weight"]
    tensors["model.layers.0.self_attn.q_proj.weight"] = tensors[
        "model.layers.0.self_attn.q_proj.weight"
    ][:, :10].copy()
    tensors["model.layers.0.extra.weight"] = np.zeros(3, np.float32)
    save_file(tensors, tmp_path / "hf" / "model.safetensors")
    with pytest.raises(CheckpointMismatchError) as error:
        ahn_jax.from_pretrained(tmp_path / "hf")
    message = str(error.value)
    with pytest.raises(CheckpointMismatchError):  # converting it leaves no empty --out behind
        convert.hf_to_orbax(tmp_path / "hf", tmp_path / "ckpt")
    assert not (tmp_path / "ckpt").exists()
    for expected in (
        "2 missing",
        "model.layers.1.mlp.up_proj.weight",
        "model.norm.weight",
        "1 unexpected",
        "model.layers.0.extra.weight",
        "1 mis-shaped",
        "model.layers.0.self_attn.q_proj.weight: checkpoint (64, 10), config expects (64, 64)",
    ):
        assert expected in message


def test_config_that_does_not_fit_the_weights(tmp_path):
    save_tiny_qwen2(tmp_path / "hf", num_hidden_layers=2)
    config_path = tmp_path / "hf" / "config.json"
    config = json.loads(config_path.read_text())
    config["num_hidden_layers"] = 3
    config_path.write_text(json.dumps(config))
    with pytest.raises(CheckpointMismatchError, match="model.layers.2.input_layernorm.weight"):
        convert.hf_to_orbax(tmp_path / "hf", tmp_path / "ckpt")


def test_cli_errors_are_clear(tmp_path, capsys):
    save_tiny_qwen2(tmp_path / "hf")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "file").write_text("x")
    assert (
        convert_cli.main(["--hf_dir", str(tmp_path / "hf"), "--out", str(tmp_path / "busy")]) == 2
    )
    assert "exists and is not empty" in capsys.readouterr().err
    assert (
        convert_cli.main(["--to_hf", "--ckpt", str(tmp_path / "hf"), "--out", str(tmp_path / "x")])
        == 2
    )
    assert "is not an ahn_jax checkpoint" in capsys.readouterr().err
    assert (
        convert_cli.main(["--hf_dir", str(tmp_path / "nowhere"), "--out", str(tmp_path / "y")]) == 2
    )
    assert f"{tmp_path / 'nowhere'} does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        convert_cli.main(["--out", str(tmp_path / "z")])
    assert "--hf_dir DIR is required" in capsys.readouterr().err
    (tmp_path / "orbax").mkdir()  # an Orbax checkpoint as --hf_dir: said "no *.safetensors"
    (tmp_path / "orbax" / converted.MARKER_FILE).write_text("{}")
    with pytest.raises(SystemExit):
        convert_cli.main(["--hf_dir", str(tmp_path / "orbax"), "--out", str(tmp_path / "z")])
    assert "is an ahn_jax (Orbax) checkpoint: export it with --to_hf --ckpt" in (
        capsys.readouterr().err
    )


def test_a_single_file_wins_over_a_stale_index_as_in_transformers(tmp_path):
    """Saving unsharded into a directory that held a sharded checkpoint leaves the old index
    behind (transformers removes the shards only); transformers reads model.safetensors."""
    save_tiny_qwen2(tmp_path / "hf", max_shard_size="40KB", num_hidden_layers=2)
    index = (tmp_path / "hf" / "model.safetensors.index.json").read_text()
    hf_model = save_tiny_qwen2(tmp_path / "hf", num_hidden_layers=2, seed=1)
    for shard in (tmp_path / "hf").glob("model-*-of-*.safetensors"):
        shard.unlink()
    (tmp_path / "hf" / "model.safetensors.index.json").write_text(index)
    ids = random_ids(hf_model.config.vocab_size)
    model = ahn_jax.from_pretrained(tmp_path / "hf")
    np.testing.assert_allclose(np.asarray(model(ids)), hf_logits(hf_model, ids), atol=1e-4, rtol=0)


def test_a_tied_config_with_an_lm_head_of_its_own_is_warned_about(tmp_path):
    save_tiny_qwen2(tmp_path / "hf", tie_word_embeddings=True)
    path = tmp_path / "hf" / "model.safetensors"
    tensors = load_file(path)
    tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"].copy()
    save_file(tensors, path, metadata={"format": "pt"})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the same values: nothing to say
        ahn_jax.from_pretrained(tmp_path / "hf")
    tensors["lm_head.weight"] = tensors["lm_head.weight"] + 1
    save_file(tensors, path, metadata={"format": "pt"})
    with pytest.warns(UserWarning, match="lm_head.weight differs from them; it is not used"):
        model = ahn_jax.from_pretrained(tmp_path / "hf")
    # transformers 5 unties and uses the file's head; tied again, it runs as we do (and as
    # transformers 4.51 loads it: test_transformers4.py)
    hf_model = Qwen2ForCausalLM.from_pretrained(tmp_path / "hf")
    ids = random_ids(model.config.vocab_size)
    assert np.abs(np.asarray(model(ids)) - hf_logits(hf_model, ids)).max() > 1e-2
    hf_model.lm_head.weight = hf_model.model.embed_tokens.weight
    np.testing.assert_allclose(np.asarray(model(ids)), hf_logits(hf_model, ids), atol=1e-4, rtol=0)


def test_a_corrupt_marker_is_named(tmp_path):
    save_tiny_qwen2(tmp_path / "hf")
    convert.hf_to_orbax(tmp_path / "hf", tmp_path / "ckpt")
    (tmp_path / "ckpt" / "ahn_jax_checkpoint.json").write_text("{")
    with pytest.raises(CheckpointFormatError, match=r"ahn_jax_checkpoint\.json is not valid JSON"):
        ahn_jax.from_pretrained(tmp_path / "ckpt")
