"""trials/data/order.py: the batch order a checkpoint can hold."""

from __future__ import annotations

import functools
import json
import random

from trials.data import buckets
from trials.data.order import BatchOrder, shuffled_epoch


def _old_sampler(n: int, batch_size: int, rng: random.Random):
    """The generator BatchOrder replaced (trials.train.loop before issue 31)."""
    while True:
        order = list(range(n))
        rng.shuffle(order)
        for start in range(0, n, batch_size):
            yield order[start:start + batch_size]


def test_the_order_is_the_generators_it_replaced() -> None:
    old = _old_sampler(7, 2, random.Random(3))
    new = BatchOrder(functools.partial(shuffled_epoch, 7, 2, random.Random(3)))
    assert [next(old) for _ in range(25)] == [next(new) for _ in range(25)]


def test_bucket_epochs_are_the_bucket_samplers() -> None:
    plan = buckets.BucketPlan(sizes=((8, 4), (4, 8), (4, 4)),
                              bucket_of=(0, 0, 0, 1, 1, 2, 0, 2), crop=(0.0,) * 8)
    old = buckets.batch_sampler(plan, 2, random.Random(1))
    new = BatchOrder(functools.partial(buckets.epoch_batches, plan, 2, random.Random(1)))
    assert [next(old) for _ in range(20)] == [next(new) for _ in range(20)]


def test_a_saved_place_mid_epoch_goes_on_with_the_same_batches() -> None:
    rng = random.Random(5)
    order = BatchOrder(functools.partial(shuffled_epoch, 9, 4, rng))
    for _ in range(4):  # one epoch of 3 batches and one batch into the next
        next(order)
    state, rng_state = json.loads(json.dumps(order.state())), rng.getstate()
    expected = [next(order) for _ in range(10)]

    again_rng = random.Random(0)
    again_rng.setstate(rng_state)
    again = BatchOrder(functools.partial(shuffled_epoch, 9, 4, again_rng))
    again.restore(state)
    assert [next(again) for _ in range(10)] == expected
