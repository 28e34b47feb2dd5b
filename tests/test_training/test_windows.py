"""Per-row window and sink sampling (docs/method.md §Training)."""

import collections

import numpy as np
import pytest

from ahn_jax.config import SINK_CHOICES, WINDOW_CHOICES, ConfigError, DataConfig, TrainConfig
from ahn_jax.training.windows import (
    check_some_row_learns,
    lengths_that_learn,
    memory_rows,
    reference_lengths,
    rows_without_window,
    sample_windows,
)

# The reference's rule worked out by hand: W_tot in (L/8, L) among 32 .. 8192, S <= W_tot / 2.
ADMISSIBLE_TOTALS = {
    300: (64, 128, 256),  # 37.5 < W_tot < 300
    1_000: (128, 256, 512),  # 125 < W_tot < 1000
    5_000: (1024, 2048, 4096),  # 625 < W_tot < 5000
    24_576: (4096, 8192),  # 3072 < W_tot < 24576 (the 8192 cap)
}


@pytest.mark.parametrize("length", sorted(ADMISSIBLE_TOTALS))
def test_random_draws_cover_exactly_the_reference_support_uniformly(length):
    totals = ADMISSIBLE_TOTALS[length]
    assert set(totals) == {c for c in WINDOW_CHOICES if length / 8 < c < length}
    pairs = collections.Counter()
    for step in range(1, 11):  # 10 steps x 600 rows, all of this length
        window, sinks = sample_windows(np.full(600, length), seed=5, step=step)
        assert window.dtype == sinks.dtype == np.int32 and window.shape == (600,)
        pairs.update(zip((window + sinks).tolist(), sinks.tolist(), strict=True))
    expected = {(c, s) for c in totals for s in SINK_CHOICES if s <= c / 2}
    assert set(pairs) == expected  # nothing outside the support, every admissible pair drawn
    draws = sum(pairs.values())
    for total in totals:  # W_tot uniform over its candidates ...
        of_total = {s: n for (c, s), n in pairs.items() if c == total}
        assert sum(of_total.values()) == pytest.approx(draws / len(totals), rel=0.1)
        for n in of_total.values():  # ... and S uniform over the sinks that fit it
            assert n == pytest.approx(sum(of_total.values()) / len(of_total), rel=0.25)


def test_each_row_draws_from_its_own_length_independently_of_the_others():
    lengths = np.array([300, 24_576, 1_000, 5_000, 300, 24_576])
    window, sinks = sample_windows(lengths, seed=1, step=3)
    totals = window + sinks
    for length, total, s in zip(lengths, totals, sinks, strict=True):
        assert total in ADMISSIBLE_TOTALS[length] and s <= total / 2
    # a row's draw is the same whatever the other rows are
    for b in range(len(lengths)):
        alone = sample_windows(lengths[b : b + 1], seed=1, step=3, row_offset=b)
        assert (alone[0][0], alone[1][0]) == (window[b], sinks[b])
    other_rows = lengths.copy()
    other_rows[[0, 2, 3]] = [24_576, 300, 300]
    moved = sample_windows(other_rows, seed=1, step=3)
    for b in (1, 4, 5):
        assert (moved[0][b], moved[1][b]) == (window[b], sinks[b])
    # rows of one length do not share one draw
    same = sample_windows(np.full(64, 24_576), seed=1, step=3)
    assert len(set(zip(*same, strict=True))) > 4


def test_draws_repeat_across_a_resume_and_change_with_step_and_seed():
    lengths = np.array([700, 3_000, 24_576, 12_000] * 8)
    first = [sample_windows(lengths, seed=3, step=s) for s in range(1, 30)]
    again = [sample_windows(lengths, seed=3, step=s) for s in range(1, 30)]
    for (w1, s1), (w2, s2) in zip(first, again, strict=True):
        np.testing.assert_array_equal(w1, w2)
        np.testing.assert_array_equal(s1, s2)
    assert not np.array_equal(first[0][0], first[1][0])
    assert not np.array_equal(first[0][0], sample_windows(lengths, seed=4, step=1)[0])


def test_two_processes_draw_what_one_process_draws():
    lengths = np.array([400, 24_576, 2_000, 9_000, 300, 6_000, 24_576, 1_500])
    one = np.stack(sample_windows(lengths, seed=9, step=12))
    # rows dealt in turn (process p holds global rows p, p + 2, ...: the data pipeline's order)
    dealt = np.zeros_like(one)
    for p in range(2):
        dealt[:, p::2] = sample_windows(lengths[p::2], seed=9, step=12, row_offset=p, row_stride=2)
    np.testing.assert_array_equal(dealt, one)
    # or in blocks (process p holds global rows 4p .. 4p + 3)
    blocks = [sample_windows(lengths[4 * p : 4 * p + 4], seed=9, step=12, row_offset=4 * p)
              for p in range(2)]  # fmt: skip
    np.testing.assert_array_equal(np.concatenate([np.stack(b) for b in blocks], axis=1), one)


def test_rows_too_short_get_no_memory_position_and_are_counted():
    lengths = np.array([20, 300, 32, 1_000])  # 20, 32: no candidate c with L/8 < c < L
    window, sinks = sample_windows(lengths, seed=0, step=1)
    assert (window[0], sinks[0]) == (20, 0) and (window[2], sinks[2]) == (32, 0)
    assert rows_without_window(lengths, window, sinks) == 2
    # W + S reaches the row's end: no position t >= W + S inside it
    t = np.arange(64)
    for length, w, s in zip(lengths[[0, 2]], window[[0, 2]], sinks[[0, 2]], strict=True):
        assert not np.any((t >= w + s) & (t < length))
    none_fit = sample_windows(np.array([300]), seed=0, step=1, window_choices=(512,))
    assert (none_fit[0][0], none_fit[1][0]) == (300, 0)


def test_fixed_and_linear_per_row():
    lengths = np.array([4_096, 1_000, 24_576])
    window, sinks = sample_windows(lengths, seed=0, step=5, kind="fixed", window=200, sinks=8)
    assert window.tolist() == [200] * 3 and sinks.tolist() == [8] * 3
    window, sinks = sample_windows(lengths, seed=0, step=5, kind="linear", sinks=12)
    assert (window + sinks).tolist() == [1_024, 512, 6_144] and sinks.tolist() == [12] * 3
    assert window.dtype == sinks.dtype == np.int32
    short = np.array([300, 24_576])
    assert rows_without_window(short, *sample_windows(short, seed=0, step=1, kind="linear")) == 1


def test_lengths_are_read_as_the_references_collator_pads_them():
    """The reference's L is its one-row batch's length, padded to a multiple of 8 by
    LLaMA-Factory's training collator: 1,017-1,023 tokens are 1,024 there, where 128 = L/8 is no
    candidate, though 128 > 1,020 / 8; and `linear` reads 4,093 tokens as 4,096."""
    for length in (1_017, 1_020, 1_023, 1_024):
        window, sinks = sample_windows(np.full(2_000, length), seed=3, step=1)
        assert set((window + sinks).tolist()) == {256, 512}, length
    window, sinks = sample_windows(np.full(2_000, 1_016), seed=3, step=1)
    assert set((window + sinks).tolist()) == {128, 256, 512}  # 1,016 / 8 = 127 < 128
    window, sinks = sample_windows(np.array([4_093, 4_088]), seed=0, step=1, kind="linear")
    assert (window + sinks).tolist() == [1_024, 1_022]


def test_an_unknown_kind_is_an_error():
    with pytest.raises(ConfigError, match="window_sampling"):
        sample_windows([1_000], seed=0, step=1, kind="sometimes")


def test_reference_lengths_are_the_widths_transformers_collator_pads_one_row_to(
    qwen25_tokenizer_dir,
):
    """LLaMA-Factory's training collator is transformers' DataCollatorForSeq2Seq (subclassed) with
    pad_to_multiple_of=8, one sequence per device: the width it gives a row is the L the
    reference's model samples windows from."""
    from transformers import DataCollatorForSeq2Seq, PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_file=str(qwen25_tokenizer_dir / "tokenizer.json"), pad_token="<|endoftext|>"
    )
    collator = DataCollatorForSeq2Seq(tokenizer, pad_to_multiple_of=8, return_tensors="np")
    lengths = [1, 7, 8, 9, 1_017, 1_020, 1_024, 4_093]
    widths = [
        collator([{"input_ids": [11] * n, "labels": [11] * n}])["input_ids"].shape[1]
        for n in lengths
    ]
    assert reference_lengths(lengths).tolist() == widths


@pytest.mark.parametrize(
    "settings",
    [{"window_choices": (32, 64, 256)}, {"window_sampling": "linear", "sinks": 64},
     {"window_sampling": "fixed", "window": 100, "sinks": 28}],
)  # fmt: skip
def test_lengths_that_learn_are_those_the_sampler_gives_a_memory_position(settings):
    """The start-up check's rule against the sampler itself: a length learns iff some draw gives
    its row a position past W + S (20 draws per length cover every candidate here)."""
    t = TrainConfig(**settings)
    lengths = np.arange(1, 700)
    drawn = np.zeros(lengths.shape, bool)
    for step in range(20):
        window, sinks = sample_windows(lengths, seed=1, step=step, kind=t.window_sampling,
                                       window=t.window, sinks=t.sinks,
                                       window_choices=t.window_choices)  # fmt: skip
        drawn |= memory_rows(lengths, window, sinks)
    np.testing.assert_array_equal(lengths_that_learn(lengths, t), drawn)
    assert drawn.any() and not drawn.all()


@pytest.mark.parametrize(
    "train, data, message, rows_that_learn",
    [
        ({"window_choices": (256, 512)}, {"cutoff_len": 128, "filter_len": 32},
         r"rows have 33-128 tokens .* train\.window_choices \(256, 512\)", {"cutoff_len": 264}),
        # 301 / 8 > 32: every row too long for the one candidate; a row of 255 (256 / 8 = 32) too
        ({"window_choices": (32,)}, {"cutoff_len": 512, "filter_len": 300},
         r"rows have 301-512 tokens", {"cutoff_len": 512, "filter_len": 247}),
        ({"window_sampling": "fixed", "window": 120, "sinks": 8}, {"cutoff_len": 128},
         r"train\.window 120 \+ train\.sinks 8", {"cutoff_len": 129}),
        ({"window_sampling": "linear"}, {"cutoff_len": 512}, r"'linear'", {"cutoff_len": 513}),
    ],
)  # fmt: skip
def test_settings_no_row_can_learn_from_fail_at_start(train, data, message, rows_that_learn):
    with pytest.raises(ConfigError, match=message):
        check_some_row_learns(TrainConfig(seq_len=1024, **train), DataConfig(**data))
    check_some_row_learns(TrainConfig(seq_len=1024, **train), DataConfig(**rows_that_learn))
    pretrain = TrainConfig(objective="pretrain", seq_len=1024, **train)
    check_some_row_learns(pretrain, DataConfig(**data))  # pretraining reads no window
