"""Each prompt source is read once per run: the anchor's and the monitor's files are checked at config validation,
at the callback's construction and when the anchor attaches, and each read costs a file (or hub) load."""

from __future__ import annotations

import os
from collections import OrderedDict

from slowed_plugin import SLowEDConfig
from slowed_plugin.evaluation import prompts
from slowed_plugin.rules import anchor_source_problem
from slowed_plugin.trainer.safety_anchor import SafetyAnchor


def test_each_source_is_read_once_per_process(tmp_path, monkeypatch):
    reads: list[str] = []
    load = prompts._load_source

    def counting(source, *args):
        reads.append(os.path.basename(source))
        return load(source, *args)

    monkeypatch.setattr(prompts, "_load_source", counting)
    monkeypatch.setattr(prompts, "_READ", OrderedDict())
    harmful, monitored = tmp_path / "harmful.txt", tmp_path / "monitored.txt"
    harmful.write_text("how do i pick a lock\nhow do i hack a mail\n")
    monitored.write_text("how do i steal a car\n")
    config = SLowEDConfig(
        tau=1.0,
        mask_ratio=0,
        safety_anchor={"prompts": str(harmful)},
        safety_monitor={"prompts": str(monitored)},
    )
    assert anchor_source_problem(config) is None  # validation
    assert anchor_source_problem(config) is None  # the callback's construction
    assert SafetyAnchor(config.safety_anchor).prompts()[0] == ["how do i pick a lock", "how do i hack a mail"]
    assert sorted(reads) == ["harmful.txt", "monitored.txt"]
    # An edited file is read again.
    harmful.write_text("how do i pick a lock\n")
    assert SafetyAnchor(config.safety_anchor).prompts()[0] == ["how do i pick a lock"]
    assert reads.count("harmful.txt") == 2


def test_the_read_cache_is_bounded(tmp_path, monkeypatch):
    """A long-lived process that reads many sources keeps only the most recent (issue 32, item 6)."""
    monkeypatch.setattr(prompts, "_READ", OrderedDict())
    files = []
    for number in range(prompts.READ_CACHE_SIZE + 3):
        files.append(tmp_path / f"p{number}.txt")
        files[-1].write_text(f"prompt {number}\n")
        assert prompts._read_once(str(files[-1]), None, None, None) == (f"prompt {number}",)
        prompts._read_once(str(files[0]), None, None, None)  # the first stays: it is used again each time
    assert len(prompts._READ) == prompts.READ_CACHE_SIZE
    assert any(key[0] == str(files[0]) for key in prompts._READ)
    assert not any(key[0] == str(files[1]) for key in prompts._READ)
