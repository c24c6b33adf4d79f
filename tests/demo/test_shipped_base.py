"""The default base model ships with the package: the right weights, found before any build, never over a cache."""

from __future__ import annotations

import json

from slowed_plugin.demo import base_model
from slowed_plugin.demo.base_model import (
    META_FILE,
    REFERENCE_SHA256,
    SHIPPED_DIR,
    BaseSettings,
    ensure_base_model,
    find_base_model,
    load_meta,
    state_digest,
)
from slowed_plugin.demo.world import WorldSettings


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
