"""Typed config: dataclasses from dicts, overrides, and errors that name the key."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

import pytest

from ditcore.config import ConfigError, apply_overrides, from_dict, to_dict


@dataclass
class Optim:
    lr: float = 1e-4
    schedule: Literal["constant", "cosine", "wsd"] = "constant"
    betas: tuple[float, float] = (0.9, 0.999)


@dataclass
class Job:
    name: str
    steps: int = 10
    optim: Optim = field(default_factory=Optim)
    budgets: list[float] = field(default_factory=list)
    tag: Optional[str] = None


def test_nested_round_trip():
    job = from_dict(Job, {"name": "a", "optim": {"lr": 3e-4, "schedule": "wsd"}, "budgets": [1, 2e3]})
    assert job.optim.lr == 3e-4 and job.optim.schedule == "wsd"
    assert job.budgets == [1.0, 2000.0]
    assert from_dict(Job, to_dict(job)) == job


@pytest.mark.parametrize(
    "data, key",
    [
        ({"name": "a", "stpes": 3}, "stpes"),
        ({"name": "a", "optim": {"lr": 1, "warmpu": 3}}, "optim.warmpu"),
        ({"name": "a", "steps": "ten"}, "steps"),
        ({"name": "a", "steps": 1.5}, "steps"),
        ({"name": "a", "optim": {"schedule": "linear"}}, "optim.schedule"),
        ({"name": "a", "budgets": [1, "x"]}, "budgets[1]"),
        ({"name": "a", "optim": 3}, "optim"),
        ({}, "name"),
    ],
)
def test_errors_name_the_key(data, key):
    with pytest.raises(ConfigError, match=key.replace("[", r"\[").replace("]", r"\]")):
        from_dict(Job, data)


def test_overrides_parse_values_and_nest():
    out = apply_overrides(
        {"name": "a", "optim": {"lr": 1.0}},
        ["optim.lr=3e-4", "steps=7", "tag=hello", "budgets=[1e15, 2e15]", "optim.schedule=cosine"],
    )
    job = from_dict(Job, out)
    assert job.optim.lr == 3e-4 and job.steps == 7 and job.tag == "hello" and job.budgets == [1e15, 2e15]
    assert job.optim.schedule == "cosine"


def test_override_errors():
    with pytest.raises(ConfigError, match="key.sub=value"):
        apply_overrides({}, ["noequals"])
    with pytest.raises(ConfigError, match="name"):
        apply_overrides({"name": "a"}, ["name.sub=1"])
    with pytest.raises(ConfigError, match="optim.bogus"):
        from_dict(Job, apply_overrides({"name": "a"}, ["optim.bogus=1"]))
