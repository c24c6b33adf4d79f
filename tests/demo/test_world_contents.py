"""The demo worlds' contents are pinned: the shipped base model, the cached ones and every number in docs/demo.md
were made from exactly these rows. A change to the world code that changes a digest here also needs a new base
model (``BUILD_VERSION``), a new shipped copy and new documented runs; one that keeps them (a refactor) passes."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict

import pytest

from slowed_plugin.demo.hard_world import CAVEATS, build_hard_world, hard_settings
from slowed_plugin.demo.world import World, WorldSettings, build_world


def _digest(world: World) -> str:
    rows = {
        "base": {name: [asdict(e) for e in examples] for name, examples in world.base.items()},
        **{
            part: [asdict(e) for e in getattr(world, part)]
            for part in ("cot_train", "harmful_test", "benign_test", "cot_test")
        },
    }
    return hashlib.sha256(json.dumps(rows, sort_keys=True).encode()).hexdigest()[:16]


# Recorded from the worlds the documented runs used (before the shared chain helpers of world.py existed).
EXPECTED = {
    "default": "6126d7eab6ec8fcc",
    "default, no opener": "e3d516ecbd78452f",
    "hard": "81ab0c56cea402df",
    "hard, ood off": "2b3dcf105fabd736",
    "hard, varied off": "9867e834c762d609",
    "hard, imperfect off": "0724d0527a8a0dd1",
    "hard, agree off": "a28f8d292c579380",
    "hard, borderline off": "37b0cb7b7319adbc",
}


def _world(name: str) -> World:
    if name == "default":
        return build_world(WorldSettings())
    if name == "default, no opener":
        return build_world(WorldSettings(rationale_opener=""))
    if name == "hard":
        return build_hard_world()
    caveat = name.removeprefix("hard, ").removesuffix(" off")
    assert caveat in CAVEATS
    return build_hard_world(hard_settings([caveat]))


@pytest.mark.parametrize("name", list(EXPECTED))
def test_world_contents_are_the_documented_ones(name):
    assert _digest(_world(name)) == EXPECTED[name]
