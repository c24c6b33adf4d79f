"""Files SLowED writes are replaced whole or not at all (slowed_plugin.files)."""

from __future__ import annotations

import pytest

from slowed_plugin.files import atomic_write, atomic_write_text


def test_atomic_write_text_replaces_whole(tmp_path):
    path = tmp_path / "sub" / "report.md"
    atomic_write_text(path, "first")
    atomic_write_text(path, "second")
    assert path.read_text() == "second"
    assert sorted(p.name for p in path.parent.iterdir()) == ["report.md"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "results.json"
    atomic_write_text(path, "old")

    def half_then_fail(tmp: str) -> None:
        with open(tmp, "w") as handle:
            handle.write("half")
        raise KeyboardInterrupt  # Ctrl-C in the middle of a write

    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, half_then_fail)
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]


def test_demo_figure_is_written_atomically_as_png(tmp_path):
    from slowed_plugin.demo.figures import plot_frontier

    stats = {"mean": 0.5, "min": 0.4, "max": 0.6}
    summary = {name: {"tau": tau, "final": {"safety_ratio": stats, "reasoning_accuracy": stats}} for name, tau in
               (("plain", None), ("slowed", 1.5))}  # fmt: skip
    plot_frontier(summary, tmp_path / "frontier.png", "t")
    assert (tmp_path / "frontier.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["frontier.png"]
