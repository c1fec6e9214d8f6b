"""unique_points: one record per point, the newest winning, in an order that does not depend on MLflow's listing."""

from __future__ import annotations

import random

from jobs.scaling.points import ScalingPoint, unique_points


def _point(model: str, params: int, budget: float, fid: float, trial: str) -> ScalingPoint:
    return ScalingPoint(
        model=model,
        params=params,
        budget_flops=budget,
        flops=budget,
        step=int(budget / 1e9),
        checkpoint="c",
        fid=fid,
        trial_id=trial,
        run=f"{model}-{trial}",
    )


def test_points_come_back_in_one_order_whatever_order_they_were_listed_in():
    points = [_point(m, n, b, 100.0 - b / 1e11, f"t{m}") for m, n in (("S", 10), ("B", 40)) for b in (1e11, 2e11, 4e11)]
    listings = [random.Random(seed).sample(points, len(points)) for seed in range(5)]
    orders = {tuple((p.model, p.budget_flops) for p in unique_points(listing)) for listing in listings}
    assert orders == {(("B", 1e11), ("B", 2e11), ("B", 4e11), ("S", 1e11), ("S", 2e11), ("S", 4e11))}


def test_a_point_recorded_twice_keeps_its_newest_record():
    old, new = _point("S", 10, 1e11, 90.0, "t1"), _point("S", 10, 1e11, 80.0, "t1")
    assert [p.fid for p in unique_points([old, _point("S", 10, 2e11, 70.0, "t1"), new])] == [80.0, 70.0]
