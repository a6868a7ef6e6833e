"""The order in which a trial sees its training examples, as an object whose place can be saved.

A trial draws endless shuffled epochs of micro-batches (lists of example indices), each epoch
drawn with the trial's ``random.Random`` when the previous one is used up, as a DataLoader with
``shuffle=True``. A generator cannot be saved; :class:`BatchOrder` draws the same batches in the
same order from the same RNG, and :meth:`BatchOrder.state` is the epoch being used and the
position in it, which a checkpoint keeps (:mod:`trials.train.resume`).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any


def shuffled_epoch(n_examples: int, batch_size: int, rng: random.Random) -> list[list[int]]:
    """One epoch: the indices ``0 .. n_examples - 1`` shuffled, cut into batches of
    ``batch_size`` (the last may be smaller)."""
    order = list(range(n_examples))
    rng.shuffle(order)
    return [order[start:start + batch_size] for start in range(0, n_examples, batch_size)]


class BatchOrder:
    """Endless epochs of micro-batches; ``draw_epoch()`` draws the next epoch's batches."""

    def __init__(self, draw_epoch: Callable[[], list[list[int]]]) -> None:
        self.draw_epoch = draw_epoch
        self.epoch: list[list[int]] = []
        self.position = 0  # batches of ``epoch`` already used

    def __iter__(self) -> BatchOrder:
        return self

    def __next__(self) -> list[int]:
        # Drawn when the next batch is asked for, not when the last one is used, as the
        # generator it replaces: the RNG draws happen at the same moment of the loop.
        if self.position >= len(self.epoch):
            self.epoch = self.draw_epoch()
            self.position = 0
        batch = self.epoch[self.position]
        self.position += 1
        return batch

    def state(self) -> dict[str, Any]:
        """JSON-able: ``{"epoch": [[index, ...], ...], "position": int}``."""
        return {"epoch": [list(b) for b in self.epoch], "position": self.position}

    def restore(self, state: dict[str, Any]) -> None:
        """Go back to where :meth:`state` was taken (the RNG is restored separately)."""
        self.epoch = [list(b) for b in state["epoch"]]
        self.position = int(state["position"])
