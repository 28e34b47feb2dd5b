"""Our checkpoints in transformers 4.51.3 itself, the version the reference (ByteDance-Seed/AHN)
pins and its merge script and evaluation run under; the rest of the suite runs transformers 5.

transformers 4.51 runs in a subprocess (transformers4_probe.py) from the copy `make test` installs
in .venv/transformers4. Checked there: our base, merged and AHN-only exports build the model we
run (RoPE theta included: 4.x reads only the top-level `rope_theta`), checkpoints that 4.51 saves
load as 4.51 runs them, greedy generation under generation_config.json and with Qwen2's own
sliding window gives our tokens, 4.51's logits processors (penalty, temperature, top-k, top-p, in
its order) score as ours, and YaRN reads as transformers 5 reads it, which for Qwen2.5's own 128k
setting is not what 4.51 does."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file, save_file
from shared import (
    assert_same_scores,
    generate_as_the_cli,
    hf_logits,
    random_ids,
    save_tiny_qwen2,
    tiny_config,
)

import ahn_jax
from ahn_jax import convert as convert_cli
from ahn_jax.checkpoints.pretrained import save_model
from ahn_jax.inference import generate as generate_lib

TRANSFORMERS4 = Path(sys.prefix) / "transformers4"  # Makefile: TRANSFORMERS4_PACKAGES
PROBE = Path(__file__).with_name("transformers4_probe.py")
VERSION = "4.51.3"
W, S = 5, 3
THETA = 1e6  # not the 10,000 transformers 4 assumes when `rope_theta` is missing
# Qwen2.5's config.json keys (its sliding-window fields, off), on a tiny model
QWEN25_KEYS = dict(
    vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
    num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-6, rope_theta=THETA,
    use_sliding_window=False, sliding_window=4096, max_window_layers=1,
)  # fmt: skip


def transformers4(tmp_path: Path, request: dict) -> dict:
    """The probe's result for `request` (its docstring), run under transformers 4.51.3: one
    process for the whole module, as each start imports torch and transformers (seconds)."""
    if not (TRANSFORMERS4 / "transformers").is_dir():
        pytest.fail(f"transformers {VERSION} is not installed in {TRANSFORMERS4}: run `make test`")
    request_path, result_path = tmp_path / "request.json", tmp_path / "result.json"
    request_path.write_text(json.dumps(request))
    pythonpath = f"{TRANSFORMERS4}{os.pathsep}{Path(__file__).parents[1]}"  # + tests/shared.py
    env = {**os.environ, "PYTHONPATH": pythonpath, "JAX_PLATFORMS": "cpu"}
    run = subprocess.run(
        [sys.executable, str(PROBE), str(request_path), str(result_path)],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(result_path.read_text())
    assert result.pop("version") == VERSION
    return result


def assert_same_logits(ours, theirs) -> None:
    np.testing.assert_allclose(np.asarray(ours), np.asarray(theirs), atol=1e-4, rtol=0)


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """Our exports of a θ = 1e6 Qwen2 that transformers 5 saved: `convert --to_hf` of its Orbax
    conversion ("base") and of a `save_model` checkpoint, whose config.json we write from scratch
    ("rebuilt"); an AHN-only directory of `save_ahn` ("ahn"), its merge with the base ("merged")
    and the merge split again ("split"); and the base with a generation_config.json
    ("generation", with the ids and our tokens of its test)."""
    root = tmp_path_factory.mktemp("exports")
    save_tiny_qwen2(root / "source", rope_theta=THETA, seed=5)

    def to_hf(ckpt, out):
        assert convert_cli.main(["--to_hf", "--ckpt", str(ckpt), "--out", str(root / out)]) == 0

    assert convert_cli.main(["--hf_dir", str(root / "source"), "--out", str(root / "orbax")]) == 0
    to_hf(root / "orbax", "base")
    model = ahn_jax.from_pretrained(root / "base", ahn_type="gdn", ahn_output_init="normal")
    save_model(model, root / "orbax_rebuilt")
    to_hf(root / "orbax_rebuilt", "rebuilt")
    model.save_ahn(root / "ahn", window=W, sinks=S)
    argv = ["--merge", "--hf_dir", str(root / "base"), "--ahn_dir", str(root / "ahn")]
    assert convert_cli.main([*argv, "--out", str(root / "merged")]) == 0
    argv = ["--split", "--hf_dir", str(root / "merged"), "--ahn_out", str(root / "ahn_again")]
    assert convert_cli.main([*argv, "--out", str(root / "split")]) == 0
    # AHN weights whose config records no window: their merge writes `sliding_window` null
    (root / "ahn_no_window").mkdir()
    (root / "ahn_no_window" / "model.safetensors").symlink_to(root / "ahn" / "model.safetensors")
    hf = json.loads((root / "ahn" / "config.json").read_text())
    del hf["sliding_window"]
    (root / "ahn_no_window" / "config.json").write_text(json.dumps(hf))
    argv = ["--merge", "--hf_dir", str(root / "base"), "--ahn_dir", str(root / "ahn_no_window")]
    assert convert_cli.main([*argv, "--out", str(root / "merged_no_window")]) == 0
    return root


@pytest.fixture(scope="module")
def generation(exports):
    """The base export with a generation_config.json (greedy, repetition penalty 1.3, sampling
    settings that greedy leaves unused, max_length, an eos id list): (directory, prompts, our
    model, our tokens with the penalty and without the file's eos)."""
    directory = exports / "generation"
    directory.mkdir()
    for name in ("config.json", "model.safetensors"):
        (directory / name).symlink_to(exports / "base" / name)
    ids = random_ids(97, shape=(2, 6), seed=2).tolist()
    model = ahn_jax.from_pretrained(directory)
    penalized = generate_as_the_cli(model, directory, ids, repetition_penalty=1.3,
                                    max_new_tokens=15)  # fmt: skip
    eos = next(t for t in penalized[0][3:] if t not in penalized[1])  # stops row 0 only
    (directory / "generation_config.json").write_text(json.dumps(dict(
        do_sample=False, repetition_penalty=1.3, temperature=0.7, top_k=20, top_p=0.8,
        max_length=6 + 15, eos_token_id=[eos], pad_token_id=0,
    )))  # fmt: skip
    return directory, ids, model, penalized, eos


LOADED = ("base", "rebuilt", "split", "merged", "merged_no_window")
IDS = random_ids(97).tolist()  # 13 tokens: past W
YARN = {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32}
YARN_IDS = random_ids(97, shape=(2, 40), seed=4)
YARN_POSITIONS = np.stack([np.arange(40) * 3 + 5, np.arange(40) + 90]).astype(np.int32)
SAVED_IDS = random_ids(97, shape=(2, 17), seed=3).tolist()
SWA_WINDOW = 5
SWA_IDS = random_ids(97, shape=(2, 12), seed=1).tolist()  # longer than the window from the start
SWA_SETTINGS = dict(repetition_penalty=1.3, max_new_tokens=20)


# the token choice under 4.51's processors (test_sampling checks transformers 5's):
# Qwen2.5-Instruct's sampling settings, greedy with a penalty, and filters that bite


def _decays_by_hf_name(ahn_type) -> dict[str, bool]:
    """Our decay mask on a model's trained weights (the AHN's; the whole base when pretraining),
    by the name each weight has in the reference's PyTorch model (our export names)."""
    import jax

    from ahn_jax.checkpoints.ahn_weights import ahn_tensor_maps
    from ahn_jax.checkpoints.hf_naming import tensor_maps
    from ahn_jax.model.transformer import abstract_model
    from ahn_jax.training.optimizer import decays

    config = tiny_config(ahn_type=ahn_type, num_layers=2)
    flat = nnx.to_flat_state(nnx.state(abstract_model(config), nnx.Param))
    shapes = {tuple(map(str, path)): leaf.get_value().shape for path, leaf in flat}
    maps = ahn_tensor_maps(config, shapes) if ahn_type else tensor_maps(config, shapes)
    return {m.hf_name: decays(tuple(map(jax.tree_util.DictKey, m.path))) for m in maps}


DECAY_NAMES = {trained: _decays_by_hf_name(None if trained == "base" else trained)
               for trained in ("gdn", "dn", "mamba2", "base")}  # fmt: skip
PROCESSOR_SETTINGS = [
    dict(do_sample=True, temperature=0.7, top_k=20, top_p=0.8, repetition_penalty=1.05),
    dict(do_sample=False, repetition_penalty=1.3, temperature=0.5, top_k=3),
    dict(do_sample=True, temperature=2.0, top_k=7, top_p=1.0, repetition_penalty=1.2),
    dict(do_sample=True, temperature=0.3, top_k=0, top_p=0.5, repetition_penalty=1.0),
]
_rng = np.random.default_rng(3)
PROCESSOR_LOGITS = (_rng.standard_normal((3, 97)) * 3).astype(np.float32)
PROCESSOR_IDS = _rng.integers(0, 40, (3, 25))  # repeats: the penalty applies once per token


@pytest.fixture(scope="module")
def answers(exports, generation, tmp_path_factory):
    """(directory, what transformers 4.51 answered) for every test of this module, in one run."""
    root = tmp_path_factory.mktemp("transformers4")
    request = {name: {"kind": "load", "dir": str(exports / name), "ids": IDS} for name in LOADED}
    # what the reference's merge script reads first: AutoConfig of the AHN-only directory
    keys = ["rope_theta", "sliding_window", "num_attn_sinks", "use_sliding_window"]
    request["ahn"] = {"kind": "config", "dir": str(exports / "ahn"), "keys": keys}
    directory, ids = generation[:2]
    request["generation"] = {"kind": "load", "dir": str(directory), "ids": ids, "generate": {}}
    # Qwen2's own sliding window, on: 4.51's generate with it against our mode "swa" (S = 0)
    swa = root / "sliding_window"
    swa.mkdir()
    (swa / "model.safetensors").symlink_to(exports / "base" / "model.safetensors")
    hf = json.loads((exports / "base" / "config.json").read_text())
    hf.update(use_sliding_window=True, sliding_window=SWA_WINDOW, max_window_layers=0)
    (swa / "config.json").write_text(json.dumps(hf))
    request["sliding_window"] = {"kind": "load", "dir": str(swa), "ids": SWA_IDS,
                                 "generate": {"do_sample": False, **SWA_SETTINGS}}  # fmt: skip
    # a tied config whose file holds a differing lm_head.weight: 4.51 ties (transformers 5 not)
    tied = root / "tied_head_differs"
    tied.mkdir()
    hf.update(tie_word_embeddings=True, use_sliding_window=False, sliding_window=None)
    (tied / "config.json").write_text(json.dumps(hf))
    tensors = load_file(exports / "base" / "model.safetensors")
    tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"] + 1
    save_file(tensors, tied / "model.safetensors", metadata={"format": "pt"})
    request["tied_head_differs"] = {"kind": "load", "dir": str(tied), "ids": IDS}
    for dtype in ("float32", "bfloat16"):  # a Qwen2.5-like checkpoint of 4.51's own
        config = {**QWEN25_KEYS, "tie_word_embeddings": True}  # as Qwen2.5-3B
        request[f"saved_{dtype}"] = {"kind": "save", "dir": str(root / f"saved_{dtype}"),
                                     "config": config, "seed": 2, "dtype": dtype,
                                     "ids": SAVED_IDS}  # fmt: skip
    for name, max_positions in (("qwen25_style", 32), ("agreeing", 128)):
        config = {**QWEN25_KEYS, "max_position_embeddings": max_positions, "rope_scaling": YARN}
        request[name] = {"kind": "save", "dir": str(root / name), "config": config, "seed": 1,
                         "dtype": "float32", "ids": YARN_IDS.tolist(),
                         "position_ids": YARN_POSITIONS.tolist()}  # fmt: skip
    for trained, names in DECAY_NAMES.items():
        request[f"decay_{trained}"] = {"kind": "decay", "names": sorted(names)}
    for index, settings in enumerate(PROCESSOR_SETTINGS):
        request[f"processors_{index}"] = {"kind": "processors", "settings": settings,
                                          "logits": PROCESSOR_LOGITS.tolist(),
                                          "ids": PROCESSOR_IDS.tolist()}  # fmt: skip
    return root, transformers4(root, request)


def test_transformers4_builds_our_model_from_every_export(exports, answers):
    result = answers[1]
    model = ahn_jax.from_pretrained(exports / "base")
    full = model(np.asarray(IDS), mode="full")
    # no window (4.x takes a missing one as 4096: IDS are shorter, so 4096 would pass too; the
    # probe reports the value read)
    for name in ("base", "rebuilt", "split", "merged_no_window"):
        assert (result[name]["rope_theta"], result[name]["sliding_window"]) == (THETA, None)
        assert_same_logits(full, result[name]["logits"])
    assert result["ahn"] == {"rope_theta": THETA, "sliding_window": W, "num_attn_sinks": S,
                             "use_sliding_window": False}  # fmt: skip
    # A merged directory's `sliding_window` is AHN's W, as the reference writes it; plain Qwen2
    # in transformers 4 masks to it although use_sliding_window is false: it runs the base as
    # sliding-window attention (W keys, no sinks). Transformers 5 runs it as the base
    # (test_layouts.py); under 4.x, load the base or split the merge (docs/method.md).
    assert result["merged"]["rope_theta"] == THETA
    assert_same_logits(model(np.asarray(IDS), mode="swa", window=W, sinks=0),
                       result["merged"]["logits"])  # fmt: skip
    assert np.abs(np.asarray(full) - np.asarray(result["merged"]["logits"])).max() > 1e-2


def test_a_tied_config_ignores_a_differing_lm_head_as_transformers4_does(answers):
    root, result = answers
    with pytest.warns(UserWarning, match="lm_head.weight differs from them; it is not used"):
        model = ahn_jax.from_pretrained(root / "tied_head_differs")
    assert_same_logits(model(np.asarray(IDS), mode="full"), result["tied_head_differs"]["logits"])


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_checkpoints_transformers4_saves_load_as_it_runs_them(answers, dtype):
    root, result = answers
    directory = root / f"saved_{dtype}"
    saved = json.loads((directory / "config.json").read_text())
    assert "rope_parameters" not in saved and saved["rope_theta"] == THETA  # 4.x keys only
    model = ahn_jax.from_pretrained(directory)
    assert model.config.rope_theta == THETA
    # a bf16 checkpoint: both sides run its bf16 weights in fp32
    assert_same_logits(
        model(np.asarray(SAVED_IDS), mode="full"), result[f"saved_{dtype}"]["logits"]
    )


def test_greedy_generation_under_generation_config_equals_transformers4(generation, answers):
    directory, ids, model, penalized, eos = generation
    ours = generate_as_the_cli(model, directory, ids)
    assert ours == answers[1]["generation"]["tokens"]
    assert ours == [penalized[0][: penalized[0].index(eos)], penalized[1]]


def test_yarn_reads_as_transformers5_which_differs_from_4_51_for_qwen25s_setting(answers, caplog):
    """transformers before 4.56 (4.51 included) replaces a YaRN `factor` by
    max_position_embeddings / original_max_position_embeddings whenever the latter is given
    (huggingface/transformers#38224, fixed by #40320). Qwen2.5's 128k setting keeps
    max_position_embeddings = original = 32,768, so 4.51 runs it with factor 1: no scaling at all.
    We follow transformers >= 4.56 and 5 (and vLLM): the factor as written. Where the two readings
    agree (max_position_embeddings = factor x original), 4.51 and we agree."""
    root, result = answers

    def ours(directory):
        return ahn_jax.from_pretrained(directory)(YARN_IDS, positions=YARN_POSITIONS, mode="full")

    assert_same_logits(ours(root / "agreeing"), result["agreeing"]["logits"])
    assert "4.51" not in caplog.text
    qwen25 = root / "qwen25_style"
    as_written = ours(qwen25)
    assert "max_position_embeddings / original_max_position_embeddings = 1 instead" in caplog.text
    from transformers import Qwen2ForCausalLM  # transformers 5, in this process

    hf_model = Qwen2ForCausalLM.from_pretrained(qwen25)
    assert_same_logits(as_written, hf_logits(hf_model, YARN_IDS, position_ids=YARN_POSITIONS))
    difference = np.abs(np.asarray(as_written) - np.asarray(result["qwen25_style"]["logits"]))
    assert difference.max() > 1e-3  # ten times the tolerance of equal logits
    # 4.51's reading, written out: factor = 32 / 32
    hf = json.loads((qwen25 / "config.json").read_text())
    hf["rope_scaling"]["factor"] = 1.0
    (qwen25 / "config.json").write_text(json.dumps(hf))
    assert_same_logits(ours(qwen25), result["qwen25_style"]["logits"])


def test_sliding_window_generation_equals_transformers4(exports, answers):
    """transformers 4.51's Qwen2 sliding window (use_sliding_window, every layer: key k visible
    from query q iff q - k < W, in its sdpa mask as in 5's) generates our mode "swa" with S = 0,
    greedy with a repetition penalty."""
    model = ahn_jax.from_pretrained(exports / "base")
    ours = generate_lib.generate(
        model, SWA_IDS, mode="swa", window=SWA_WINDOW, sinks=0, **SWA_SETTINGS
    )
    assert ours == answers[1]["sliding_window"]["tokens"]
    full = generate_lib.generate(model, SWA_IDS, mode="full", window=0, **SWA_SETTINGS)
    assert full != ours  # the window mattered


@pytest.mark.parametrize("index", range(len(PROCESSOR_SETTINGS)))
def test_token_choice_equals_transformers4_processors(answers, index):
    """Penalty, temperature, top-k and top-p as 4.51's generate builds and orders them: the same
    tokens filtered out, the same scores (to float32 rounding)."""
    import jax.numpy as jnp

    from ahn_jax.inference import sampling as sampling_lib

    settings = PROCESSOR_SETTINGS[index]
    theirs = np.asarray(
        [
            [-np.inf if s is None else s for s in row]
            for row in answers[1][f"processors_{index}"]["scores"]
        ],
        np.float32,
    )
    seen = sampling_lib.presence_mask(jnp.asarray(PROCESSOR_IDS, jnp.int32), 97)
    ours = np.asarray(
        sampling_lib.process_logits(PROCESSOR_LOGITS, sampling_lib.Sampling(**settings), seen)
    )
    assert_same_scores(ours, theirs)
    if settings["do_sample"] and (settings["top_k"] or settings["top_p"] < 1):
        assert np.isneginf(theirs).any()  # the filters did something


@pytest.mark.parametrize("trained", list(DECAY_NAMES))
def test_weight_decay_falls_where_transformers4s_trainer_puts_it(answers, trained):
    """The reference trained with transformers 4.51's Trainer, which decays what
    `get_decay_parameter_names` returns for its modules' names: on the names our AHN weights have
    in the reference's model, our mask decays exactly those. Pretraining the base (our objective,
    not the reference's) exempts one weight more: the final norm, `model.norm.weight`, whose
    name the Trainer's rule does not catch (it catches `input_layernorm` and
    `post_attention_layernorm`)."""
    ours = {name for name, decayed in DECAY_NAMES[trained].items() if decayed}
    theirs = set(answers[1][f"decay_{trained}"]["decayed"])
    assert theirs - ours == ({"model.norm.weight"} if trained == "base" else set())
    assert ours <= theirs
