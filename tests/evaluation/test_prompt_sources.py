"""Each prompt source is read once per run: the anchor's and the monitor's files are checked at config validation,
at the callback's construction and when the anchor attaches, and each read costs a file (or hub) load."""

from __future__ import annotations

import os

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
    monkeypatch.setattr(prompts, "_READ", {})
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
