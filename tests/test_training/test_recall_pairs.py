"""The recall signal: pairs of identical random spans, placed in order-preserved text."""

import numpy as np
import pytest

from ahn_jax.training import recall_pairs
from ahn_jax.training.recall_pairs import KEY_LETTER, MARKER, ORDINARY, RECALL_LETTER, RecallSpec


@pytest.mark.parametrize("seed", range(5))
def test_pairs_repeat_their_letters_beyond_the_gap_in_order_kept_text(seed):
    spec = RecallSpec(span=16, pairs=2, min_gap=64, max_gap=150)
    text = np.frombuffer(b"To be, or not to be, that is the question. " * 10, np.uint8)
    ids, kinds = recall_pairs.insert_recall(text, 256, spec, np.random.default_rng(seed))
    assert ids.shape == kinds.shape == (256,)
    keys, recalls = np.flatnonzero(kinds == KEY_LETTER), np.flatnonzero(kinds == RECALL_LETTER)
    assert len(keys) == len(recalls) == 2 * 16
    assert (kinds[: spec.first_key] == ORDINARY).all()
    spans = {}
    for positions, opener in ((keys, b"<k="), (recalls, b"<r=")):
        for span in np.split(positions, 2):
            assert (np.diff(span) == 1).all()  # contiguous letters
            assert bytes(ids[span[0] - 3 : span[0]].astype(np.uint8)) == opener
            assert ids[span[-1] + 1] == ord(">") and kinds[span[-1] + 1] == MARKER
            assert ((97 <= ids[span]) & (ids[span] <= 122)).all()
            spans.setdefault(bytes(ids[span].astype(np.uint8)), []).append(span[0])
    assert len(spans) == 2  # each key's letters appear again once, after the gap
    for key_start, recall_start in spans.values():
        assert 64 <= recall_start - key_start <= 150
    plain = ids[kinds == ORDINARY]  # the text, in order, with the blocks taken out
    np.testing.assert_array_equal(plain, text[: len(plain)])


def test_the_same_seed_gives_the_same_window_and_bad_specs_are_named():
    spec, text = RecallSpec(), np.zeros(600, np.int32) + 32
    a = recall_pairs.insert_recall(text, 512, spec, np.random.default_rng(3))
    b = recall_pairs.insert_recall(text, 512, spec, np.random.default_rng(3))
    assert all((x == y).all() for x, y in zip(a, b, strict=True))
    with pytest.raises(ValueError, match="cannot hold a pair 384 bytes apart"):
        recall_pairs.insert_recall(text, 256, spec, np.random.default_rng(0))
    with pytest.raises(ValueError, match="min_gap"):
        RecallSpec(min_gap=10).check(512)


def test_distinct_capital_keys_never_repeat_a_letter_and_impossible_alphabets_are_named():
    capitals = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    spec = RecallSpec(span=16, pairs=1, min_gap=64, max_gap=150, letters=capitals, distinct=True)
    text = np.zeros(300, np.int32) + ord("e")
    for seed in range(20):
        ids, kinds = recall_pairs.insert_recall(text, 256, spec, np.random.default_rng(seed))
        key, again = ids[kinds == KEY_LETTER], ids[kinds == RECALL_LETTER]
        np.testing.assert_array_equal(key, again)
        assert len(set(key.tolist())) == 16 and ((65 <= key) & (key <= 90)).all()
    with pytest.raises(ValueError, match="span 16 > 10 distinct"):
        RecallSpec(letters="0123456789", distinct=True).check(512)
    with pytest.raises(ValueError, match="letters must be non-empty ASCII"):
        RecallSpec(letters="").check(512)
