"""The adaptation's time budget: each stage stops at its share of the time left."""

import pytest

from adapt.selfsup.budget import PLANNED_ROUNDS, TimeBudget, steps_within, stopped_early


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def test_a_stage_gets_its_share_of_what_is_left_after_the_reserve():
    clock = Clock()
    budget = TimeBudget(1000.0, clock=clock, reserve_s=200.0)
    clock.t += 100.0  # setup took 100 s: 700 s are left for training
    assert budget.left() == 700.0
    time_up = budget.time_up(0.5)
    clock.t += 349.0
    assert not time_up()
    clock.t += 1.0
    assert time_up()


def test_steps_stop_once_time_is_up_and_the_report_says_so():
    calls = iter([False, False, True])
    assert list(steps_within(5, lambda: next(calls))) == [0, 1]
    assert list(steps_within(3, None)) == [0, 1, 2]
    assert stopped_early(2, 5) == {"stopped": "time budget: 2 of 5 steps"} and stopped_early(5, 5) == {}


def test_without_a_limit_nothing_stops():
    budget = TimeBudget(None)
    assert budget.time_up(0.5) is None and budget.left() == float("inf") and not budget.limited


def test_the_first_planned_round_gets_half_the_rest_gets_all_that_is_left():
    assert PLANNED_ROUNDS == 2
    assert [TimeBudget.round_share(r) for r in range(3)] == [0.5, 1.0, 1.0]


def test_a_budget_must_be_positive():
    with pytest.raises(ValueError, match="positive"):
        TimeBudget(0.0)
