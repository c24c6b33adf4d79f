"""benchmarks/: split by job (a thin entry, one file per benchmark), and a --help that says what --quick runs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"


def test_quick_does_not_promise_two_minutes():
    done = subprocess.run(
        [sys.executable, str(BENCH / "bench.py"), "--help"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    text = " ".join(done.stdout.split())
    assert "2 minutes" not in text
    assert "(d) still builds and trains the real Qwen2.5-0.5B shape" in text


def test_one_file_per_benchmark_and_a_thin_entry():
    parts = {"loss", "vocab_step", "slow_tuning", "real_shape", "gpu_step", "qlora_memory"}
    assert parts | {"bench", "harness"} == {p.stem for p in BENCH.glob("*.py")}
    for name in parts:
        source = (BENCH / f"{name}.py").read_text()
        assert "WORKERS = {" in source and "\ndef report(" in source, name
    assert len((BENCH / "bench.py").read_text().splitlines()) < 120


def test_an_unknown_part_is_one_line():
    done = subprocess.run(
        [sys.executable, str(BENCH / "bench.py"), "--only", "az"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2
    assert "--only 'az': unknown part(s) z; parts are abcdef" in done.stderr


@pytest.mark.slow  # four tiny trainers in forks: ~15 s
def test_one_step_machinery_runs_the_benchmark_variants():
    """(b)'s variants (``nll``, SLowED over ``nll``) go through the step pairs of ``slowed doctor --bench``."""
    from slowed_plugin.bench.step_pairs import run_in_subprocess

    runs = run_in_subprocess(
        timeout=600, shape="tiny", dtype="float32", pairs=1, batch=1, length=32, variants=["nll", "slowed_nll"]
    )
    for variant in ("nll", "slowed_nll"):
        assert len(runs[variant]["step_times"]) == 2 and runs[variant]["peak_mib"] > 0, runs


def test_benchmarks_keep_no_step_machinery_of_their_own():
    text = "\n".join(p.read_text() for p in BENCH.glob("*.py"))
    assert "SFTTrainer(" not in text and "slowed_plugin.doctor" not in text


def test_stock_runs_trls_own_default_loss_and_says_which(tmp_path):
    """From TRL 1.15 "stock" leaves ``loss_type`` unset (the fused LM head, TRL's default); it no longer passes the
    deprecated ``chunked_nll`` alias. The path taken is named, so a report says what stock ran."""
    import warnings

    import trl
    from packaging.version import Version

    from slowed_plugin.bench.step_pairs import build_trainer, loss_path

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = build_trainer("stock", "tiny", "float32", 1, 1, 16, "cpu", 4, [], None, str(tmp_path))
    path = loss_path(trainer, "cpu")
    if Version(trl.__version__) >= Version("1.15"):
        assert trainer.args.loss_type == trl.SFTConfig.__dataclass_fields__["loss_type"].default == "nll"
        assert not [w for w in caught if "chunked_nll" in str(w.message)]
        assert path == 'loss_type="nll" (fused LM head, PyTorch tiles)'
    else:
        assert path == 'loss_type="chunked_nll"'


def test_bad_real_shape_options_are_one_line():
    done = subprocess.run(
        [sys.executable, str(BENCH / "bench.py"), "--only", "d", "--dtypes", "float16"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert "--dtypes 'float16': each must be one of float32, bfloat16" in done.stderr
