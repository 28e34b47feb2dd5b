"""AHN weights: fresh on a converted base, the reference's AHN-only layout both ways, bad files."""

import json

import numpy as np
import pytest
from shared import random_ids, save_tiny_qwen2

from ahn_jax import convert as convert_cli
from ahn_jax import from_pretrained
from ahn_jax.checkpoints import ahn_weights, safetensors_io
from ahn_jax.checkpoints.hf_naming import CheckpointMismatchError
from ahn_jax.checkpoints.pretrained import ahn_params_of, save_model
from ahn_jax.config import AHN_TYPES, ConfigError

W, S = 4, 2


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tiny_qwen2")
    save_tiny_qwen2(directory)
    return directory


def _assert_same_ahn(a, b):
    pa, pb = ahn_params_of(a), ahn_params_of(b)
    assert set(pa) == set(pb)
    for path in pa:
        np.testing.assert_array_equal(pa[path], pb[path], err_msg=str(path))


@pytest.mark.parametrize("ahn_type", AHN_TYPES)
def test_reference_layout_round_trip_is_bit_exact(hf_dir, tmp_path, ahn_type):
    model = from_pretrained(hf_dir, ahn_type=ahn_type, ahn_output_init="normal", seed=3)
    ids = random_ids(97, (1, 20))
    # the base weights are the checkpoint's: mode "full" ignores the memory
    np.testing.assert_array_equal(np.asarray(model(ids)), np.asarray(from_pretrained(hf_dir)(ids)))

    exported = model.save_ahn(tmp_path / "ahn", window=W, sinks=S)
    config_json = json.loads((exported / "config.json").read_text())
    assert config_json["_ahn_implementation"] == ahn_weights.IMPLEMENTATIONS[ahn_type]
    found = ahn_weights.read_ahn_settings(exported)
    assert (found["ahn_type"], found["window"], found["sinks"]) == (ahn_type, W, S)
    tensors = safetensors_io.tensor_index(exported)
    assert all(name.startswith("model.layers.") and ".ahn.fn." in name for name in tensors)
    assert tensors["model.layers.1.ahn.fn.g_proj.weight"].shape == (4, 64)  # torch [out, in]
    assert tensors["model.layers.0.ahn.fn.o_proj.weight"].shape == (4, 16, 16)

    loaded = from_pretrained(hf_dir, ahn_path=exported)
    assert loaded.config.ahn_type == ahn_type
    _assert_same_ahn(model, loaded)
    np.testing.assert_array_equal(
        np.asarray(loaded(ids, mode="ahn", window=W, sinks=S)),
        np.asarray(model(ids, mode="ahn", window=W, sinks=S)),
    )

    # the CLI: an Orbax checkpoint holding AHN weights -> the same AHN-only files
    save_model(model, tmp_path / "ckpt")
    argv = ["--ahn_only", "--ckpt", str(tmp_path / "ckpt"), "--out", str(tmp_path / "cli")]
    assert convert_cli.main([*argv, "--window", str(W), "--sinks", str(S)]) == 0
    # one writer: the CLI's config.json is the model's, key for key
    assert json.loads((tmp_path / "cli" / "config.json").read_text()) == config_json
    cli = safetensors_io.tensor_index(tmp_path / "cli")
    assert set(cli) == set(tensors)
    for name, info in cli.items():
        np.testing.assert_array_equal(
            safetensors_io.read_tensor(info), safetensors_io.read_tensor(tensors[name])
        )
    _assert_same_ahn(model, from_pretrained(tmp_path / "ckpt"))


def test_fresh_weights_start_with_a_zero_output_projection(hf_dir):
    model = from_pretrained(hf_dir, ahn_type="gdn")
    params = ahn_params_of(model)
    assert not np.any(params[("layers", "ahn", "o_proj")])
    assert np.all(np.isfinite(params[("layers", "ahn", "A_log")]))
    ids = random_ids(97, (1, 20))
    np.testing.assert_allclose(
        np.asarray(model(ids, mode="ahn", window=W, sinks=S)),
        np.asarray(model(ids, mode="swa", window=W, sinks=S)),
        atol=1e-6,
    )


def _export(hf_dir, tmp_path, ahn_type="gdn", name="ahn"):
    model = from_pretrained(hf_dir, ahn_type=ahn_type, ahn_output_init="normal")
    return model.save_ahn(tmp_path / name, window=W, sinks=S)


def test_saving_loaded_weights_again_keeps_what_their_config_records(hf_dir, tmp_path):
    """A model loaded with AHN weights saves them with their W, S, window sampling and loss
    (`save_ahn()` wrote 32640 / 128 / fixed / kl, and generate --ahn then ran other windows),
    from an AHN-only directory and from a merged one; fresh weights take the defaults."""
    from ahn_jax.checkpoints import layouts

    model = from_pretrained(hf_dir, ahn_type="gdn", ahn_output_init="normal")
    params = ahn_params_of(model)
    first = ahn_weights.save_ahn_weights(
        tmp_path / "first", model.config, params, window=48, sinks=3, loss="kl+ce",
        window_sampling="random",
    )  # fmt: skip
    merged = layouts.merge(hf_dir, first, tmp_path / "merged")
    for source, loaded in (
        ("ahn-only", from_pretrained(hf_dir, ahn_path=first)),
        ("merged", from_pretrained(merged)),
    ):
        again = ahn_weights.read_ahn_settings(loaded.save_ahn(tmp_path / f"again-{source}"))
        assert (again["window"], again["sinks"], again["window_sampling"]) == (48, 3, "random")
        assert again["hf"]["loss_type"] == ["kl", "ce"], source
        flagged = loaded.save_ahn(tmp_path / f"flags-{source}", window=16, sinks=0)
        assert ahn_weights.read_ahn_settings(flagged)["window"] == 16
    # through an Orbax checkpoint of the loaded model, and its export back to HF
    save_model(from_pretrained(merged), tmp_path / "ckpt")
    reloaded = from_pretrained(tmp_path / "ckpt")
    assert reloaded.ahn_record == ahn_weights.AhnRecord(48, 3, "random", "kl+ce")
    _assert_same_ahn(reloaded, model)
    fresh = ahn_weights.read_ahn_settings(model.save_ahn(tmp_path / "fresh"))
    assert (fresh["window"], fresh["sinks"]) == (ahn_weights.DEFAULT_WINDOW, 128)
    # a merged directory loaded with fresh weights of another type records nothing of its own
    other = from_pretrained(merged, ahn_type="dn")
    assert other.ahn_record is None


def _rewrite(directory, drop=(), reshape=None):
    infos = safetensors_io.tensor_index(directory)
    arrays = {n: np.array(safetensors_io.read_tensor(i)) for n, i in infos.items() if n not in drop}
    if reshape:
        arrays[reshape] = np.zeros((3, 5), np.float32)
    (directory / "model.safetensors").unlink()
    plans = [
        safetensors_io.TensorPlan(n, a.shape, a.dtype, lambda a=a: a) for n, a in arrays.items()
    ]
    safetensors_io.write_checkpoint(directory, plans)


def test_bad_ahn_weights_fail_naming_the_tensor(hf_dir, tmp_path):
    missing = _export(hf_dir, tmp_path, name="missing")
    _rewrite(missing, drop=("model.layers.1.ahn.fn.b_proj.weight",))
    with pytest.raises(CheckpointMismatchError, match=r"model\.layers\.1\.ahn\.fn\.b_proj\.weight"):
        from_pretrained(hf_dir, ahn_path=missing)

    misshaped = _export(hf_dir, tmp_path, name="misshaped")
    _rewrite(misshaped, reshape="model.layers.0.ahn.fn.A_log")
    with pytest.raises(
        CheckpointMismatchError, match=r"model\.layers\.0\.ahn\.fn\.A_log: .*\(3, 5\)"
    ):
        from_pretrained(hf_dir, ahn_path=misshaped)

    other_type = _export(hf_dir, tmp_path, ahn_type="mamba2", name="mamba2")
    with pytest.raises(ConfigError, match="'gdn'.*'mamba2'"):
        from_pretrained(hf_dir, ahn_type="gdn", ahn_path=other_type)

    # a config saying DN over GDN tensors: the GDN-only tensors are unexpected
    relabelled = _export(hf_dir, tmp_path, name="relabelled")
    config_path = relabelled / "config.json"
    config_path.write_text(
        json.dumps({**json.loads(config_path.read_text()), "_ahn_implementation": "DeltaNet"})
    )
    with pytest.raises(CheckpointMismatchError, match=r"unexpected[\s\S]*a_proj\.weight"):
        from_pretrained(hf_dir, ahn_path=relabelled)

    config_path.write_text(json.dumps({"model_type": "qwen2"}))
    with pytest.raises(ConfigError, match="_ahn_implementation"):
        from_pretrained(hf_dir, ahn_path=relabelled)
