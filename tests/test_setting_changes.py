"""The one wording of resume refusals: what differs between recorded settings and a command's."""

from ahn_jax import setting_changes


def test_names_each_changed_setting_in_order_with_both_values():
    before = setting_changes.flat({"generation": {"top_k": 5, "top_p": 0.9}, "run": 2})
    now = setting_changes.flat({"generation": {"top_k": 20, "top_p": 0.9}, "run": 1})
    assert setting_changes.changes(before, now) == [
        "generation.top_k: 5 -> 20",
        "run: 2 -> 1",
    ]


def test_a_setting_one_side_lacks_shows_unset_and_a_recorded_none_is_no_change():
    before = {"window": 16, "removed_since": None, "old": "x"}
    now = {"window": 16, "added_since": 3}
    assert setting_changes.changes(before, now) == [
        "added_since: (unset) -> 3",
        "old: 'x' -> (unset)",
    ]


def test_ignored_names_and_the_comparison_rule():
    def without_size(value):
        return {k: v for k, v in value.items() if k != "size"} if isinstance(value, dict) else value

    before = {"task": {"seed": 1, "size": 4}, "data": "a"}
    now = {"task": {"seed": 1, "size": 8}, "data": "b"}
    assert setting_changes.changes(before, now, ignore={"data"}, compared=without_size) == []
    now["task"]["seed"] = 2
    assert setting_changes.changes(before, now, ignore={"data"}, compared=without_size) == [
        "task: {'seed': 1, 'size': 4} -> {'seed': 2, 'size': 8}"
    ]
