"""The order in which waiting runs get a slot (:class:`llray.distributed.queue.LongestFirst`):
every kind is tried early, then the longest expected run goes first, which shortens a
sweep whose long runs come last in the grid."""

import heapq

import pytest

from llray.distributed.queue import LongestFirst

COST = {"naive": 1.0, "ewc": 1.5, "replay": 2.0, "joint": 4.0}  # seconds per run
GRID = [(s, seed) for s in COST for seed in range(3)]  # strategy-major, as cfg.runs()


def makespan(queue, slots: int) -> float:
    """Simulate free slots taking runs from ``queue`` (each reports its cost at its end)."""
    clock, ends = 0.0, []
    for _ in range(slots):
        run = queue.popleft()
        heapq.heappush(ends, (COST[run[0]], run))
    while ends:
        clock, done = heapq.heappop(ends)
        if hasattr(queue, "finished"):
            queue.finished(done, COST[done[0]])
        if queue:
            run = queue.popleft()
            heapq.heappush(ends, (clock + COST[run[0]], run))
    return clock


class Fifo(list):
    def popleft(self):
        return self.pop(0)


def test_longest_first_ends_a_strategy_major_grid_sooner_than_grid_order():
    fifo = makespan(Fifo(GRID), slots=2)
    lpt = makespan(LongestFirst(GRID, key=lambda r: r[0]), slots=2)
    lower_bound = sum(COST[s] for s, _ in GRID) / 2  # perfectly even split
    assert lpt < fifo
    assert lpt <= lower_bound * 4 / 3


def test_every_kind_is_tried_once_in_grid_order_before_any_kind_twice():
    q = LongestFirst(GRID, key=lambda r: r[0])
    assert [q.popleft()[0] for _ in range(4)] == list(COST)


def test_measured_kinds_go_longest_first_and_unmeasured_in_flight_kinds_rank_longest():
    q = LongestFirst(GRID, key=lambda r: r[0])
    first = [q.popleft() for _ in range(4)]
    for run in first[:3]:  # joint's first run is still learning
        q.finished(run, COST[run[0]])
    order = [q.popleft()[0] for _ in range(len(q))]
    assert order == ["joint"] * 2 + ["replay"] * 2 + ["ewc"] * 2 + ["naive"] * 2
    with pytest.raises(IndexError):
        q.popleft()


def test_a_failed_or_unfinished_measurement_is_ignored_and_the_queue_lists_what_waits():
    q = LongestFirst([("a", 0), ("b", 0), ("a", 1), ("b", 1)], key=lambda r: r[0])
    a, b = q.popleft(), q.popleft()
    q.finished(a, float("nan"))
    q.finished(b, 1.0)
    assert len(q) == 2 and sorted(q) == [("a", 1), ("b", 1)]
    assert q.popleft() == ("a", 1)  # a: in flight as far as anyone knows, ranks longest
