"""The demo's ablations: each variant is a valid training run that changes what it claims to, and
the groups, tables and figure are built from the scored rows (the end-to-end run is
`python -m ahn_jax.demo --quick --ablations`, timed in docs/results.md)."""

import numpy as np

from ahn_jax.config import TrainConfig
from ahn_jax.demo import ablations
from ahn_jax.training.windows import sample_windows
from configs import demo_gdn


def _variant_train(name):
    config = demo_gdn.get_config()
    ahn_type, changes = ablations.variants(demo_gdn.SINKS)[name]
    return ahn_type, TrainConfig.from_dict({**config.train.to_dict(), **changes})


def test_variants_change_only_what_they_name():
    base = TrainConfig.from_dict(demo_gdn.get_config().train.to_dict())
    _, tiny = _variant_train("gdn-tiny-window")
    assert (tiny.window, tiny.sinks, tiny.window_sampling) == (ablations.TINY_WINDOW, 4, "fixed")
    _, ce = _variant_train("gdn-ce")
    assert ce.loss == "ce" and base.loss == "kl" and ce.window == base.window
    _, random_w = _variant_train("gdn-random-window")
    window_B, sinks_B = sample_windows(
        np.full(512, random_w.seq_len), seed=0, step=3, kind=random_w.window_sampling,
        window_choices=random_w.window_choices, sink_choices=random_w.sink_choices,
    )  # fmt: skip
    # W = 16 is never trained (W + S must exceed L / 8 = 32): generalisation below the range
    assert set(window_B.tolist()) == {32, 64, 128} and set(sinks_B.tolist()) == {4}


def test_groups_score_each_model_at_its_window_and_full_attention_once():
    ahns = dict.fromkeys(("gdn", "dn", "mamba2", *ablations.variants(4)), "dir")
    groups = ablations._evaluations(ahns, window=32, sinks=4)
    generalisation = groups["window_generalisation"]
    assert [r for r in generalisation if r[2] == "full"] == [
        ("full @ W = 16", "base", "full", 16, 4)
    ]
    for w in ablations.EVAL_WINDOWS:
        at_w = {r[0].split(" @ ")[0] for r in generalisation if r[3] == w}
        assert {"swa", "ahn-gdn", "ahn-dn", "ahn-mamba2", "ahn-gdn, random W"} <= at_w
    memory = {r[1]: r[3] for r in groups["memory_alone"] if r[2] == "ahn"}
    assert memory == {"gdn-tiny-window": ablations.TINY_WINDOW, "gdn": 32}
    assert [r[1] for r in groups["objective"]] == ["gdn", "gdn-ce"]


def test_tables_and_figure_from_scored_rows(tmp_path):
    ahns = dict.fromkeys(("gdn", *ablations.variants(4)), "dir")

    def estimate(x):
        return {"mean": x, "stderr": 0.01}

    groups = {
        group: [
            {
                "name": name,
                "model": key,
                "mode": mode,
                "window": w,
                "sinks": s,
                "recall": estimate(3.0 - w / 100),
                "key": estimate(3.0),
                "text": estimate(1.6),
            }
            for name, key, mode, w, s in rows
        ]  # fmt: skip
        for group, rows in ablations._evaluations(ahns, 32, 4).items()
    }
    results = {"groups": groups, "window": 32, "sinks": 4, "plays": ["a", "b"],
               "windows_per_play": 2, "seed": 0, "quick": False, "minutes": 1.0}  # fmt: skip
    text = ablations.markdown(results)
    assert "| ahn-gdn, CE | 2.680 ± 0.010 | 3.000 ± 0.010 | 1.600 ± 0.010 |" in text
    assert "| ahn-gdn, random W @ W = 128 | 1.720 ± 0.010 |" in text
    path = tmp_path / "recall_vs_window.png"
    ablations.plot_recall_vs_window(groups["window_generalisation"], 4, path)
    assert path.stat().st_size > 0
