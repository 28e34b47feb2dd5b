"""Every evaluate task is of a kind each dispatch knows; a task of a kind one does not know is
refused there by name, not run as another task's (its chat rule, extras, score or prompts)."""

import pytest

from ahn_jax import evaluate
from ahn_jax.evaluation import results, runner, settings, tasks


@pytest.mark.parametrize("task", results.TASKS)
def test_every_task_has_a_kind_and_its_chat_rule_and_extras(task):
    kind = results.task_kind(task)
    assert kind in ("benchmark", "passkey", "niah", "perplexity")
    assert (kind == "benchmark") == (task in tasks.BENCHMARKS)
    assert (kind in ("passkey", "niah")) == (task in results.GRID_TASKS)
    assert settings._uses_chat(task, "qwen2.5-7b-instruct", "auto") in (True, False)
    grid = dict(lengths=["64"], depths=["0.5"], samples=1, seed=0)
    extras = settings._task_extras(task, 64, grid, {}, None)
    assert ("seed" in extras) == (task in results.GRID_TASKS)
    assert ("bucket" in extras) == (kind == "perplexity")


def test_a_task_of_a_new_kind_is_refused_where_no_branch_knows_it(monkeypatch):
    monkeypatch.setitem(results.TASK_KINDS, "copy", "copying")
    what = r"task 'copy' is of kind 'copying', for which evaluation has no "
    with pytest.raises(results.UnknownKindError, match=what + "chat-template rule"):
        settings._uses_chat("copy", "qwen2.5-7b-instruct", "on")
    with pytest.raises(results.UnknownKindError, match=what + "extra settings"):
        settings._task_extras("copy", 64, {}, {}, None)
    with pytest.raises(results.UnknownKindError, match=what + "score"):
        runner.score_prediction("copy", {"answers": ["a"]}, "a")

    class Copy:
        task = "copy"

    with pytest.raises(results.UnknownKindError, match=what + "prompt builder"):
        evaluate._prompts(None, Copy(), [])


def test_a_task_without_a_kind_is_named():
    with pytest.raises(ValueError, match="task 'copy' has no kind: add it to TASK_KINDS"):
        results.task_kind("copy")
