"""Records the training data skips: the count users see, and the end of a stream where nothing
survives."""

from __future__ import annotations

import threading

from absl import logging

from ahn_jax.config import ConfigError


class SkipCounter:
    """Counts the distinct skipped records (thread-safe: grain may read with several threads);
    a bad record read again in a later pass over the data is not counted or logged again."""

    LOGGED = 20

    def __init__(self):
        self._lock = threading.Lock()
        self._seen: set[str] = set()

    @property
    def count(self) -> int:
        return len(self._seen)

    def skip(self, where: str, why: str) -> None:
        with self._lock:
            if where in self._seen:
                return
            self._seen.add(where)
            count = len(self._seen)
        if count <= self.LOGGED:
            logging.warning("skipping bad record %s: %s", where, why)
        elif count == self.LOGGED + 1:
            logging.warning("more bad records; only the count is reported from now on")


class Usable:
    """`encode`, counting the records it skips (None: bad, or shorter than data.filter_len), which
    the reader drops. A stream in which nothing survives would be read forever, a step never
    ending (not even on SIGTERM, which waits for the step): `limit` skipped records in a row (two
    passes' worth of this process's reads, so that one whole shuffled pass lies among them in a
    single process) end it with an error."""

    def __init__(self, encode, limit: int):
        self.encode, self.limit, self.in_a_row = encode, limit, 0

    def __call__(self, record):
        element = self.encode(record)
        if element is not None:
            self.in_a_row = 0
            return element
        self.in_a_row += 1
        if self.in_a_row >= self.limit:
            raise ConfigError(
                f"data: no usable record in {self.limit:,} read in a row (each was skipped: bad, "
                "or shorter than data.filter_len); check data.paths, data.format and "
                "data.filter_len"
            )
        return None
