"""Several JSONL files: `data.mix` (the reference's interleave_probs, first_exhausted) and
`data.max_samples` (each file's first records): probabilities, caps, seed, resume, errors."""

import json

import numpy as np
import pytest

from ahn_jax.config import ConfigError, DataConfig
from ahn_jax.tokenizer import ByteTokenizer
from ahn_jax.training import data
from ahn_jax.training.mixing import interleave


def _reference_loop(sizes, probs, seed):
    """Hugging Face datasets' first_exhausted interleaving, one draw at a time."""
    rng = np.random.default_rng(seed)
    taken, order = [0] * len(sizes), []
    while True:
        for file in rng.choice(len(sizes), size=1000, p=probs):
            order.append((int(file), taken[file]))
            taken[file] += 1
            if taken[file] == sizes[file]:
                return order


@pytest.mark.parametrize(
    "sizes, probs, seed",
    [((1500, 2500, 700), (0.5, 0.3, 0.2), 0), ((1500, 2500, 700), (0.5, 0.3, 0.2), 7),
     ((40, 3000), (0.01, 0.99), 1), ((5, 9, 300), (0.0, 0.6, 0.4), 2), ((1,), (1.0,), 3)],
)  # fmt: skip
def test_interleave_is_the_references_first_exhausted_order(sizes, probs, seed):
    order = interleave(sizes, probs, seed)
    assert order.tolist() == [list(pair) for pair in _reference_loop(sizes, probs, seed)]
    counts = np.bincount(order[:, 0], minlength=len(sizes))
    assert (counts <= sizes).all() and (counts == sizes).sum() == 1  # one file ran out, the last


def test_mixing_probabilities_hold_over_many_draws(tmp_path):
    probs, draws = (0.5, 0.3, 0.2), 20_000
    paths = []
    for name in "abc":  # 20k records each: the mixture runs ~40k draws before "a" runs out
        paths.append(tmp_path / f"{name}.jsonl")
        paths[-1].write_text("".join(json.dumps({"text": f"{name}{i:05d}"}) + "\n"
                                     for i in range(20_000)))  # fmt: skip
    config = DataConfig(format="text", paths=tuple(map(str, paths)), filter_len=1, cutoff_len=16,
                        mix=probs)  # fmt: skip
    iterator = iter(data.make_dataset(config, ByteTokenizer(), batch_size=500, seed=0,
                                      buckets=(16,)))  # fmt: skip
    first = np.concatenate([next(iterator)["input_ids"][:, 0] for _ in range(draws // 500)])
    for name, p in zip("abc", probs, strict=True):
        share = np.mean(first == ord(name))
        assert abs(share - p) < 3 * np.sqrt(p * (1 - p) / draws), (name, share)


def _write(path, n, bad=()):
    lines = [json.dumps({"text": f"{path.stem} record {i:03d}"}) for i in range(n)]
    for number, text in bad:
        lines.insert(number - 1, text)
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def _rows(config, steps, batch_size=4, seed=0):
    iterator = iter(data.make_dataset(config, ByteTokenizer(), batch_size=batch_size, seed=seed,
                                      buckets=(32,)))  # fmt: skip
    batches = [next(iterator)["input_ids"] for _ in range(steps)]
    return [bytes(row[row > 0].astype(np.uint8)).decode() for b in batches for row in b]


def test_max_samples_caps_each_file_at_its_first_records(tmp_path):
    # a blank line is no record; a bad one is, as the reference caps records before parsing them
    paths = (_write(tmp_path / "a.jsonl", 10), _write(tmp_path / "b.jsonl", 20, [(3, "")]),
             _write(tmp_path / "c.jsonl", 30, [(2, "{bad")]))  # fmt: skip
    source = data.JsonlLines(paths, max_samples=15)
    assert len(source) == 10 + 15 + 15
    assert source[len(source) - 1][0].endswith("c.jsonl:15")  # line 2 is the bad record
    config = DataConfig(format="text", paths=paths, filter_len=1, cutoff_len=32, max_samples=15)
    seen = set(_rows(config, steps=10))  # one epoch: the 39 good records and one skipped
    expected = {f"a record {i:03d}" for i in range(10)} | {f"b record {i:03d}" for i in range(15)}
    assert seen == expected | {f"c record {i:03d}" for i in range(14)}
    mixed = data.JsonlLines(paths, max_samples=15, mix=(0.2, 0.3, 0.5), seed=0)
    capped = {source[i][0] for i in range(len(source))}
    assert {mixed[i][0] for i in range(len(mixed))} <= capped  # the mixture draws from the caps


def test_mixing_is_seeded_and_the_iterator_state_resumes_it(tmp_path):
    paths = tuple(_write(tmp_path / f"{name}.jsonl", 50) for name in "abc")
    config = DataConfig(format="text", paths=paths, filter_len=1, cutoff_len=32,
                        mix=(0.5, 0.3, 0.2))  # fmt: skip
    assert _rows(config, steps=6) == _rows(config, steps=6)
    assert _rows(config, steps=6) != _rows(config, steps=6, seed=1)

    def make():
        return iter(data.make_dataset(config, ByteTokenizer(), batch_size=4, seed=0,
                                      buckets=(32,)))  # fmt: skip

    first = make()
    for _ in range(30):  # past the first epoch of the mixture (~100 records)
        next(first)
    state = json.loads(json.dumps(first.get_state()))
    expected = [next(first)["input_ids"] for _ in range(5)]
    resumed = make()
    resumed.set_state(state)
    for batch in expected:
        np.testing.assert_array_equal(next(resumed)["input_ids"], batch)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"mix": (1.0,)}, r"data\.mix needs one probability per path of data\.paths \(2\)"),
        ({"mix": (0.7, 0.4)}, r"data\.mix must be probabilities >= 0 that sum to 1"),
        ({"mix": (-0.5, 1.5)}, r"data\.mix must be probabilities >= 0"),
        ({"mix": ("a", "b")}, r"data\.mix must be a sequence of numbers"),
        ({"max_samples": -1}, r"data\.max_samples must be >= 0"),
        ({"max_samples": 1.5}, r"data\.max_samples must be an integer"),
    ],
)
def test_mix_and_max_samples_errors_name_the_field(changes, message):
    with pytest.raises(ConfigError, match=message):
        DataConfig(paths=("a.jsonl", "b.jsonl"), **changes)


def test_mix_fields_get_their_types_and_txt_documents_refuse_them(tmp_path):
    config = DataConfig(paths=("a.jsonl", "b.jsonl"), mix=[1, 0])
    assert config.mix == (1.0, 0.0) and DataConfig(paths=("a", "b"), mix=(0.5, 0.5 + 1e-7)).mix
    (tmp_path / "a.txt").write_text("some text " * 20)
    with pytest.raises(ConfigError, match=r"data\.mix applies to JSONL files"):
        DataConfig(format="text", paths=(str(tmp_path / "a.txt"),), mix=(1.0,))


def test_a_mix_drawing_from_an_empty_file_names_it(tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n")
    (tmp_path / "a.jsonl").write_text('{"text": "x"}\n')
    paths = [tmp_path / "empty.jsonl", tmp_path / "a.jsonl"]
    with pytest.raises(ConfigError, match=r"data\.mix draws from \['.*empty\.jsonl'\]"):
        data.JsonlLines(paths, mix=(0.5, 0.5))
    assert len(data.JsonlLines(paths, mix=(0.0, 1.0))) > 0  # drawn with probability 0: fine
