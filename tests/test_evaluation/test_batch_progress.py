"""The stage of the batch in flight on an evaluation's progress bar."""

from ahn_jax.evaluation.batch_progress import BatchProgress


class _Bar:
    def __init__(self):
        self.postfixes = []

    def set_postfix_str(self, text, refresh=True):
        self.postfixes.append(text)


def test_the_postfix_follows_prefill_then_decoding_and_is_rate_limited():
    bar = _Bar()
    progress = BatchProgress(bar, interval=0.0)
    progress.start(budget=3)
    progress.fed(4096, 10_000)
    progress.decoded()
    progress.decoded()
    assert bar.postfixes == ["prompt 4,096/10,000 tokens", "decoding 1/3", "decoding 2/3"]
    progress.written()  # a finished batch leaves no stage behind
    assert bar.postfixes[-1] == ""
    progress.start(budget=5)  # the next batch counts its own steps
    progress.decoded()
    assert bar.postfixes[-1] == "decoding 1/5"
    slow = _Bar()
    limited = BatchProgress(slow, "scored", interval=3600.0)
    limited.fed(1, 2)
    limited.fed(2, 2)  # within the interval: not redrawn
    assert slow.postfixes == ["scored 1/2 tokens"]
    limited.written()
    limited.fed(1, 2)  # a new batch's first stage is drawn at once
    assert slow.postfixes == ["scored 1/2 tokens", "", "scored 1/2 tokens"]
