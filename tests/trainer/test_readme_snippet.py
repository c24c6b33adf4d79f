"""The README's TRL snippet runs as written on a CPU machine (only the model id and the data file are swapped for
local ones), and SLowED's lines reach the user at the default verbosity."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[2] / "README.md"
MODEL_ID = '"Qwen/Qwen2.5-1.5B-Instruct"'
DATA_FILE = '"rationales.jsonl"'


def trl_snippet() -> str:
    text = README.read_text()
    section = text[text.index("## TRL") :]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_snippet_names_what_the_test_swaps():
    snippet = trl_snippet()
    assert snippet.count(MODEL_ID) == 1 and snippet.count(DATA_FILE) == 1
    assert "SLowEDCallback(tau=10.0, mask_ratio=0.2)" in snippet


@pytest.mark.slow
def test_readme_trl_snippet_runs_on_cpu_and_says_slowed_is_on(llama_dir, cot_rows, tmp_path):
    data = tmp_path / "rationales.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in cot_rows[:16]))  # 2 steps an epoch at batch 8
    script = trl_snippet().replace(MODEL_ID, repr(llama_dir)).replace(DATA_FILE, repr(str(data)))
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLOWED_")}
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900
    )
    assert result.returncode == 0, result.stderr[-3000:]
    err = result.stderr
    assert "SLowED: Slow Tuning tau=10 (layer, every epoch); Low-Entropy Masking mask_ratio=0.2" in err
    # A tiny model's LoRA never gets near ||ΔW|| = 10: the user is told, with how to choose tau.
    assert re.search(r"SLowED: tau=10 did not bind at the first projection \(step 2\)", err)
    assert "slowed/max_delta_norm" in err
    assert re.search(r"SLowED: trained weights satisfy max \|\|ΔW\|\|_F = [0-9.e-]+ <= tau = 10 ", err)
    assert (tmp_path / "out").is_dir()
