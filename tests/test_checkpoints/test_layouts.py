"""The three layouts (base, AHN-only, merged): what every export's config.json says to transformers
4 and 5 and to the reference, imports of each equal param by param, split / merge byte for byte."""

import json

import numpy as np
import pytest
import torch
from flax import nnx
from shared import flat_state, hf_logits, random_ids, save_tiny_qwen2

from ahn_jax import convert as convert_cli
from ahn_jax import from_pretrained
from ahn_jax.checkpoints import ahn_weights, layouts, safetensors_io
from ahn_jax.checkpoints import convert as convert_lib
from ahn_jax.checkpoints.hf_naming import CheckpointMismatchError
from ahn_jax.config import ConfigError

W, S = 5, 3
THETA = 1e6  # not transformers' default 10,000: an export that loses it is caught


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    """A bf16 base saved by transformers 5 (no 4.x keys), its AHN-only export and the merge."""
    root = tmp_path_factory.mktemp("layouts")
    save_tiny_qwen2(root / "base", rope_theta=THETA, dtype=torch.bfloat16)
    (root / "base" / "tokenizer_config.json").write_text('{"model_max_length": 64}')
    model = from_pretrained(root / "base", ahn_type="gdn", ahn_output_init="normal", seed=1)
    model.save_ahn(root / "ahn", window=W, sinks=S)
    argv = ["--merge", "--hf_dir", str(root / "base"), "--ahn_dir", str(root / "ahn")]
    assert convert_cli.main([*argv, "--out", str(root / "merged")]) == 0
    return {"root": root, "model": model}


def _config(directory):
    return json.loads((directory / "config.json").read_text())


def _tensors(directory):
    """name -> (dtype name, shape, bytes) of every tensor, as stored."""
    return {
        name: (info.dtype.name, info.shape, safetensors_io.read_tensor(info).tobytes())
        for name, info in safetensors_io.tensor_index(directory).items()
    }


def _params(model):
    return {path: np.asarray(v) for path, v in flat_state(nnx.state(model, nnx.Param)).items()}


def _assert_same_params(a, b):
    pa, pb = _params(a), _params(b)
    assert set(pa) == set(pb)
    for path in pa:
        assert pa[path].dtype == pb[path].dtype, path
        np.testing.assert_array_equal(pa[path], pb[path], err_msg=str(path))


def test_every_export_reads_the_same_in_transformers_4_and_5(dirs, tmp_path):
    from transformers import AutoConfig

    root = dirs["root"]
    c, b = str(tmp_path / "c"), str(tmp_path / "b")
    assert convert_cli.main(["--hf_dir", str(root / "base"), "--out", c]) == 0
    assert convert_cli.main(["--to_hf", "--ckpt", c, "--out", b]) == 0
    exports = {"base": tmp_path / "b", "ahn": root / "ahn", "merged": root / "merged"}
    dtypes = {"base": "bfloat16", "ahn": "float32", "merged": "bfloat16"}  # as config.json says
    for layout, directory in exports.items():
        hf = _config(directory)
        # transformers 4's keys, which a transformers-5 source lacks, with the right values
        assert hf["rope_theta"] == THETA, layout
        assert hf["torch_dtype"] == hf["dtype"] == dtypes[layout], layout
        loaded = AutoConfig.from_pretrained(directory)  # transformers 5
        assert loaded.rope_parameters["rope_theta"] == THETA, layout
        # Qwen2's own sliding window stays off, whatever W the AHN fields carry
        assert hf["use_sliding_window"] is False and loaded.sliding_window is None, layout
    for layout in ("ahn", "merged"):
        hf = _config(exports[layout])
        assert hf["save_ahn_only"] is (layout == "ahn")
        assert (hf["sliding_window"], hf["num_attn_sinks"]) == (W, S)
        assert hf["_layer_implementation"] == "Qwen2MemDecoderLayer"
        assert hf["_ahn_implementation"] == "GatedDeltaNet"
        assert (hf["sliding_window_type"], hf["ahn_position"]) == ("fixed", "random")
        assert (hf["fa_layer_ids"], hf["loss_type"]) == ("", ["kl"])
        assert not hf["use_ahn_router"] and not hf["use_q_proj"]
        assert hf["use_normalized_l2"] and hf["use_layerwise_decay"]
        found = ahn_weights.read_ahn_settings(exports[layout])
        assert (found["ahn_type"], found["window"], found["sinks"]) == ("gdn", W, S)
    assert "_ahn_implementation" not in _config(exports["base"])


def test_no_sinks_reads_as_the_references_prefix_position(dirs, tmp_path):
    model = dirs["model"]
    hf = _config(model.save_ahn(tmp_path / "ahn", window=64, sinks=0))
    assert (hf["sliding_window"], hf["num_attn_sinks"], hf["ahn_position"]) == (64, 0, "prefix")
    with pytest.raises(ConfigError, match="window must be an int > 0"):
        model.save_ahn(tmp_path / "bad", window=0, sinks=0)


def test_merged_and_ahn_only_imports_are_the_same_model(dirs, tmp_path, capsys):
    root, model = dirs["root"], dirs["model"]
    from_ahn_only = from_pretrained(root / "base", ahn_path=root / "ahn")
    merged = from_pretrained(root / "merged")
    assert merged.config.ahn_type == "gdn"
    _assert_same_params(merged, from_ahn_only)
    # a merged directory given as the AHN weights gives its AHN tensors; an AHN-only one given as
    # the model is named as such
    _assert_same_params(from_pretrained(root / "base", ahn_path=root / "merged"), merged)
    # bit-exact export -> import (equal parameters: equal outputs in every mode)
    _assert_same_params(merged, model)
    # sharded, with an index: the same model
    argv = ["--merge", "--hf_dir", str(root / "base"), "--ahn_dir", str(root / "ahn")]
    sharded = tmp_path / "sharded"
    assert convert_cli.main([*argv, "--out", str(sharded), "--max_shard_gb", "0.00002"]) == 0
    assert len(list(sharded.glob("model-*-of-*.safetensors"))) > 1
    assert (sharded / safetensors_io.INDEX_FILE).is_file()
    _assert_same_params(from_pretrained(sharded), merged)
    # to Orbax with its AHN weights, and back out as the base layout
    assert convert_cli.main(["--hf_dir", str(sharded), "--out", str(tmp_path / "ckpt")]) == 0
    _assert_same_params(from_pretrained(tmp_path / "ckpt"), merged)
    back = tmp_path / "back"
    capsys.readouterr()
    assert convert_cli.main(["--to_hf", "--ckpt", str(tmp_path / "ckpt"), "--out", str(back)]) == 0
    assert _tensors(back) == _tensors(root / "base")
    assert "note: the gdn AHN weights of" in capsys.readouterr().err  # and how to write them
    # the AHN fields gone; `sliding_window` null, the base's full attention to transformers 4 too
    assert not set(_config(back)) & (set(ahn_weights.AHN_CONFIG_KEYS) - {"sliding_window"})
    assert _config(back)["sliding_window"] is None


def test_an_ahn_only_directory_is_told_from_a_merged_one_by_its_tensors(dirs, tmp_path):
    """The released AHN-only configs set no `save_ahn_only`: the missing base tensors say what a
    directory is, wherever a base or a merged directory is expected."""
    root = dirs["root"]
    released = tmp_path / "released"
    released.mkdir()
    (released / "model.safetensors").write_bytes((root / "ahn" / "model.safetensors").read_bytes())
    hf = {k: v for k, v in _config(root / "ahn").items() if k != "save_ahn_only"}
    (released / "config.json").write_text(json.dumps(hf))
    assert [ahn_weights.hf_layout(root / d) for d in ("base", "ahn", "merged")] == [
        "base", "ahn_only", "merged"
    ]  # fmt: skip
    assert ahn_weights.hf_layout(released) == "ahn_only"
    only = r"holds AHN weights only \(no model\.embed_tokens\.weight\)"
    for directory in (root / "ahn", released):
        with pytest.raises(ConfigError, match=only + r": give .* as ahn_path \(--ahn\)"):
            from_pretrained(directory)
        with pytest.raises(ConfigError, match=only + r": convert its base .* --merge it"):
            convert_lib.hf_to_orbax(directory, tmp_path / "ckpt")
        with pytest.raises(ConfigError, match=only + ": not a merged checkpoint, it is already"):
            layouts.split(directory, tmp_path / "b", tmp_path / "a")
        with pytest.raises(ConfigError, match=only + r": .* as the base \(--hf_dir\)"):
            layouts.merge(directory, root / "ahn", tmp_path / "m")
    # as the AHN weights, both load, and a merged directory's AHN tensors merge like the AHN-only
    _assert_same_params(
        from_pretrained(root / "base", ahn_path=released), from_pretrained(root / "merged")
    )
    layouts.merge(root / "base", root / "merged", tmp_path / "again")
    assert _tensors(tmp_path / "again") == _tensors(root / "merged")


def test_an_explicit_choice_overrides_the_merged_ahn(dirs):
    root, model = dirs["root"], dirs["model"]
    fresh = from_pretrained(root / "merged", ahn_type="mamba2")  # another type: fresh weights
    assert fresh.config.ahn_type == "mamba2"
    params = _params(fresh)
    assert not np.any(params[("layers", "ahn", "o_proj")])
    np.testing.assert_array_equal(params[("embed_tokens",)], _params(model)[("embed_tokens",)])
    with pytest.raises(ConfigError, match="'mamba2'.*'gdn'"):
        from_pretrained(root / "merged", ahn_type="mamba2", ahn_path=root / "ahn")
    # layers kept as full attention, asked for on a base (as training's config does), or
    # contradicting what an AHN directory was trained with
    kept = from_pretrained(root / "base", ahn_type="gdn", full_attention_layers=(1,))
    assert kept.config.full_attention_layers == (1,)
    with pytest.raises(ConfigError, match=r"full_attention_layers=\[1\] but the AHN weights"):
        from_pretrained(root / "base", ahn_path=root / "ahn", full_attention_layers=(1,))
    # the same for the AHN weights a merged directory brings itself
    with pytest.raises(ConfigError, match=r"\[1\] but the AHN weights in .*merged were trained"):
        from_pretrained(root / "merged", full_attention_layers=(1,))
    assert from_pretrained(root / "merged", full_attention_layers=()).config.ahn_type == "gdn"


def test_split_and_merge_are_byte_exact_inverses(dirs, tmp_path):
    root = dirs["root"]
    argv = ["--split", "--hf_dir", str(root / "merged"), "--ahn_out", str(tmp_path / "ahn")]
    assert convert_cli.main([*argv, "--out", str(tmp_path / "base")]) == 0
    base, ahn = _tensors(root / "base"), _tensors(root / "ahn")
    assert {dtype for dtype, _, _ in base.values()} == {"bfloat16"}
    assert {dtype for dtype, _, _ in ahn.values()} == {"float32"}  # no cast to the base's dtype
    assert _tensors(tmp_path / "base") == base
    assert _tensors(tmp_path / "ahn") == ahn
    assert _tensors(root / "merged") == {**base, **ahn}
    # configs: the base's back (its own sliding_window went with the AHN fields: written null,
    # what transformers 4 reads as no window), the AHN-only one with the base's keys and
    # save_ahn_only; side files beside the base
    original = {k: v for k, v in _config(root / "base").items() if k != "sliding_window"}
    split_base = _config(tmp_path / "base")
    assert split_base == {
        **original, "rope_theta": THETA, "torch_dtype": "bfloat16", "sliding_window": None
    }  # fmt: skip
    assert _config(tmp_path / "ahn")["save_ahn_only"] is True
    for name in ("tokenizer_config.json", "generation_config.json"):
        assert (tmp_path / "base" / name).read_bytes() == (root / "base" / name).read_bytes()
        assert (root / "merged" / name).read_bytes() == (root / "base" / name).read_bytes()
    # and merging the parts again gives the merged tensors
    layouts.merge(tmp_path / "base", tmp_path / "ahn", tmp_path / "again")
    assert _tensors(tmp_path / "again") == _tensors(root / "merged")


def _kept_fp32(name):
    return name.endswith(("A_log", "dt_bias"))  # as mixed-precision training may leave them


@pytest.mark.parametrize("mix", ["all bf16", "A_log and dt_bias fp32", "a marker of one dtype"])
def test_ahn_tensor_dtypes_of_a_merge_come_back_through_orbax(dirs, tmp_path, mix):
    """Merged (AHN tensors bf16, as the reference's merge writes them, or some left fp32) ->
    Orbax -> --ahn_only: the model holds the AHN weights in fp32; each tensor comes back in its
    own dtype, bytes as they were (a marker written before per-tensor dtypes names one)."""
    from safetensors.torch import save_file

    root = dirs["root"]
    source = tmp_path / "ahn_source"
    source.mkdir()
    tensors = {}
    for name, info in safetensors_io.tensor_index(root / "ahn").items():
        tensor = torch.from_numpy(safetensors_io.read_tensor(info).copy())
        fp32 = mix == "A_log and dt_bias fp32" and _kept_fp32(name)
        tensors[name] = tensor if fp32 else tensor.bfloat16()
    save_file(tensors, str(source / "model.safetensors"))
    (source / "config.json").write_text((root / "ahn" / "config.json").read_text())
    layouts.merge(root / "base", source, tmp_path / "merged")
    assert (
        convert_cli.main(["--hf_dir", str(tmp_path / "merged"), "--out", str(tmp_path / "c")]) == 0
    )
    if mix == "a marker of one dtype":  # as convert wrote it before
        marker_file = tmp_path / "c" / "ahn_jax_checkpoint.json"
        marker = json.loads(marker_file.read_text())
        marker["ahn"].pop("tensor_dtypes")
        marker_file.write_text(
            json.dumps({**marker, "ahn": {**marker["ahn"], "dtype": "bfloat16"}})
        )
    # the stored tensors' dtypes are no model setting: loading keeps the dtypes asked for
    loaded = from_pretrained(tmp_path / "c", dtype=np.float32)
    assert (loaded.config.param_dtype, loaded.config.dtype) == ("float32", "float32")
    argv = ["--ahn_only", "--ckpt", str(tmp_path / "c"), "--out", str(tmp_path / "back")]
    assert convert_cli.main(argv) == 0
    back = _tensors(tmp_path / "back")
    assert back == _tensors(source)
    kinds = {name: dtype for name, (dtype, _, _) in back.items()}
    assert ("float32" in kinds.values()) == (mix == "A_log and dt_bias fp32")


def test_transformers_loads_a_merged_dir_as_its_base(dirs):
    from transformers import Qwen2ForCausalLM

    root = dirs["root"]
    hf_model = Qwen2ForCausalLM.from_pretrained(root / "merged", dtype=torch.float32).eval()
    ids = random_ids(97, (2, 17))
    reference = hf_logits(hf_model, ids)  # the AHN tensors ignored as unexpected keys
    base = Qwen2ForCausalLM.from_pretrained(root / "base", dtype=torch.float32).eval()
    np.testing.assert_array_equal(reference, hf_logits(base, ids))
    ours = from_pretrained(root / "merged")(ids, mode="full")
    np.testing.assert_allclose(np.asarray(ours), reference, atol=1e-4, rtol=0)


def test_configs_without_window_or_sinks_still_load(dirs, tmp_path):
    """The released AHN-only configs carry no num_attn_sinks (and may lack sliding_window)."""
    root = dirs["root"]
    released = tmp_path / "released"
    released.mkdir()
    (released / "model.safetensors").write_bytes((root / "ahn" / "model.safetensors").read_bytes())
    hf = _config(root / "ahn")
    del hf["num_attn_sinks"], hf["sliding_window"]
    (released / "config.json").write_text(json.dumps(hf))
    found = ahn_weights.read_ahn_settings(released)
    assert (found["window"], found["sinks"]) == (None, None)
    _assert_same_params(from_pretrained(root / "base", ahn_path=released), dirs["model"])
    # merged with it, the base's own window is not kept as AHN's W, and the key is null rather
    # than absent (transformers 4 would take an absent one as a 4096 window)
    merged = layouts.merged_hf_config({**_config(root / "base"), "sliding_window": 32768}, hf)
    assert "sliding_window" in merged and merged["sliding_window"] is None
    hf["num_attn_sinks"] = "128"
    (released / "config.json").write_text(json.dumps(hf))
    with pytest.raises(ConfigError, match="'num_attn_sinks' = '128' is not an int"):
        ahn_weights.read_ahn_settings(released)
    (released / "config.json").write_text('{"_ahn_implementation": ')
    with pytest.raises(ConfigError, match=r"released/config\.json is not valid JSON"):
        ahn_weights.read_ahn_settings(released)


def test_layout_errors_name_the_problem(dirs, tmp_path, capsys):
    root = dirs["root"]
    with pytest.raises(ConfigError, match="not a merged checkpoint"):
        layouts.split(root / "base", tmp_path / "b", tmp_path / "a")
    with pytest.raises(ConfigError, match="already holds AHN weights"):
        layouts.merge(root / "merged", root / "ahn", tmp_path / "m")
    with pytest.raises(FileExistsError, match="not empty"):
        layouts.merge(root / "base", root / "ahn", root / "merged")
    # AHN weights of a base with 3 layers do not fit this 2-layer base
    save_tiny_qwen2(tmp_path / "deeper", num_hidden_layers=3, rope_theta=THETA)
    from_pretrained(tmp_path / "deeper", ahn_type="gdn").save_ahn(tmp_path / "deep_ahn")
    with pytest.raises(CheckpointMismatchError, match=r"unexpected[\s\S]*model\.layers\.2\.ahn"):
        layouts.merge(root / "base", tmp_path / "deep_ahn", tmp_path / "m")
    assert not (tmp_path / "m").exists()  # checked before anything is written
    with pytest.raises(ConfigError, match=r"--out and --ahn_out name one directory \(.*same\)"):
        layouts.split(root / "merged", tmp_path / "same", tmp_path / "same")
    for argv, message in (
        (["--split", "--hf_dir", str(root / "merged")], "--split needs --ahn_out"),
        (["--merge", "--hf_dir", str(root / "base")], "--merge needs --ahn_dir"),
        (["--merge", "--split", "--hf_dir", "x"], "--merge and --split exclude each other"),
        (["--hf_dir", str(root / "base"), "--window", "7"], "--window and --sinks apply to"),
        # flags the mode does not read were ignored; sizes that are not one wrote a shard a tensor
        (["--hf_dir", str(root / "base"), "--ckpt", "c"], "--ckpt is not read by HF -> Orbax"),
        (["--to_hf", "--ckpt", "c", "--hf_dir", "x"], "--hf_dir is not read by --to_hf"),
        (["--merge", "--hf_dir", "x", "--ahn_dir", "a", "--ahn_out", "b"], "--ahn_out is not"),
        (
            ["--merge", "--hf_dir", "x", "--ahn_dir", "a", "--max_shard_gb", "nan"],
            "--max_shard_gb must be a positive size, got nan",
        ),
        (["--hf_dir", "x", "--max_shard_gb", "1"], "--max_shard_gb applies to --to_hf, --merge"),
        (
            ["--split", "--hf_dir", "x", "--ahn_out", "a", "--max_shard_gb", "0"],
            "--max_shard_gb must be a positive size, got 0.0",
        ),
    ):
        with pytest.raises(SystemExit):
            convert_cli.main([*argv, "--out", str(tmp_path / "o")])
        assert message in capsys.readouterr().err
    with pytest.raises(SystemExit):  # was NotADirectoryError's traceback
        convert_cli.main(
            ["--hf_dir", str(root / "base"), "--out", str(root / "base" / "config.json")]
        )
    assert "config.json is a file: give a new or empty directory" in capsys.readouterr().err
