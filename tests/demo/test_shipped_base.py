"""The default and the hard world's base models ship with the package: the right weights, found before any build,
never over a cache; the cache key is what changes the weights (build settings, training rows, vocabulary)."""

from __future__ import annotations

import copy
import json
from dataclasses import replace

from slowed_plugin.demo import base_model
from slowed_plugin.demo.base_model import (
    META_FILE,
    REFERENCE_SHA256,
    SHIPPED_DIR,
    SHIPPED_HARD_DIR,
    BaseSettings,
    ensure_base_model,
    find_base_model,
    load_meta,
    state_digest,
)
from slowed_plugin.demo.hard_world import HARD_MIXTURE, hard_settings
from slowed_plugin.demo.world import WorldSettings, build_world

HARD = BaseSettings(world=hard_settings(), mixture=HARD_MIXTURE)
# The weights of the hard world's shipped base model: the build docs/demo.md's hard-world tables were made with.
HARD_REFERENCE_SHA256 = "6de52b0c8724954b7e01c9c0e7558aaeb8a819758511a3db3a6d1d0aed6aba70"


def test_the_shipped_weights_are_the_reference_build_of_the_default_settings():
    from transformers import AutoModelForCausalLM

    meta = load_meta(SHIPPED_DIR)
    assert meta["key"] == BaseSettings().key()  # a changed default or BUILD_VERSION must ship a new build
    assert meta["build_version"] == base_model.BUILD_VERSION
    assert meta["numerics"]["pinned"] is True
    model = AutoModelForCausalLM.from_pretrained(SHIPPED_DIR)
    # the bits, not only the recorded digest: what the workers load is what the docs' numbers came from
    assert state_digest(model) == meta["state_sha256"] == REFERENCE_SHA256


def test_the_default_settings_need_no_build(monkeypatch, tmp_path):
    monkeypatch.setenv("SLOWED_CACHE", str(tmp_path))
    assert find_base_model(BaseSettings()) == (SHIPPED_DIR, "shipped")

    def no_build(*args, **kwargs):
        raise AssertionError("the shipped default was rebuilt")

    monkeypatch.setattr(base_model, "build_base_model", no_build)
    assert ensure_base_model(BaseSettings(), progress=False) == SHIPPED_DIR
    assert list(tmp_path.iterdir()) == []  # nothing written to the cache


def test_other_settings_are_not_served_the_shipped_weights(monkeypatch, tmp_path):
    monkeypatch.setenv("SLOWED_CACHE", str(tmp_path))
    assert find_base_model(BaseSettings(world=WorldSettings(rationale_opener=""))) is None
    assert find_base_model(BaseSettings(steps=60)) is None


def test_a_cached_build_comes_before_the_shipped_one(monkeypatch, tmp_path):
    """`--rebuild-base` writes the cache; later runs use that build, as they did before anything shipped."""
    monkeypatch.setenv("SLOWED_CACHE", str(tmp_path))
    cached = base_model.cached_path(BaseSettings())
    cached.mkdir(parents=True)
    (cached / META_FILE).write_text(json.dumps({"key": BaseSettings().key()}))
    assert find_base_model(BaseSettings()) == (cached, "cached")


def test_the_hard_worlds_base_model_ships_too(monkeypatch, tmp_path):
    """`slowed demo --world hard` started with a 12-minute build on an empty cache."""
    from transformers import AutoModelForCausalLM

    monkeypatch.setenv("SLOWED_CACHE", str(tmp_path))
    meta = load_meta(SHIPPED_HARD_DIR)
    assert meta["key"] == HARD.key() and meta["numerics"]["pinned"] is True
    assert meta["settings"]["world"]["world"] == "hard"
    model = AutoModelForCausalLM.from_pretrained(SHIPPED_HARD_DIR)
    assert state_digest(model) == meta["state_sha256"] == HARD_REFERENCE_SHA256
    assert find_base_model(HARD) == (SHIPPED_HARD_DIR, "shipped")
    assert base_model.reference_sha256(HARD) == HARD_REFERENCE_SHA256
    assert base_model.reference_sha256(BaseSettings()) == REFERENCE_SHA256
    assert base_model.reference_sha256(BaseSettings(steps=60)) is None
    assert find_base_model(BaseSettings(world=hard_settings(["agree"]), mixture=HARD_MIXTURE)) is None


def test_the_cache_key_is_the_rows_and_the_vocabulary_not_the_worlds_settings(monkeypatch):
    """Two worlds whose base-model rows and vocabulary are equal share one base model; a changed row or a
    changed vocabulary does not."""
    world = build_world(WorldSettings())
    worlds = {WorldSettings(): world, WorldSettings(seed=9): world}
    monkeypatch.setattr(base_model, "build_world", lambda settings: worlds[settings])
    base_model.content_key.cache_clear()
    try:
        assert BaseSettings(world=WorldSettings(seed=9)).key() == BaseSettings().key()
        changed = copy.deepcopy(world)
        changed.base["benign"][0] = replace(changed.base["benign"][0], answer="sure .")
        worlds[WorldSettings(seed=9)] = changed
        base_model.content_key.cache_clear()
        assert BaseSettings(world=WorldSettings(seed=9)).key() != BaseSettings().key()
        assert BaseSettings(steps=801).key() != BaseSettings().key()
    finally:
        base_model.content_key.cache_clear()


def test_the_agree_and_borderline_ablations_train_the_hard_base_rows_with_another_vocabulary():
    """Why they still build their own base model: the same rows, but the tokenizer's ids follow word counts
    over every text of the world (distillation included), so the agreeing opener reorders them and the
    borderline rows add five words."""
    hard = build_world(hard_settings())
    for caveat in ("agree", "borderline"):
        other = build_world(hard_settings([caveat]))
        assert all(other.base[name] == hard.base[name] for name, _ in HARD_MIXTURE)
        assert BaseSettings(world=hard_settings([caveat]), mixture=HARD_MIXTURE).key() != HARD.key()
