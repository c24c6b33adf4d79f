"""Slow Tuning and masking under DeepSpeed ZeRO-2 and ZeRO-3: two processes (torchrun, gloo, CPU) against one.

`tests/support/ds_train.py` trains TRL's SFTTrainer with SLowEDCallback (projection every step, tau binding at
every step) for 3 steps with plain SGD, so that the first step's update is exactly -lr * gradient: with LoRA
(`--mode lora`) and with full fine-tuning (`--mode full`, every weight trainable, projected against its start).
"""

import json
import os
import subprocess
import sys

import pytest
import torch
from ports import torchrun

HERE = os.path.join(os.path.dirname(os.path.dirname(__file__)), "support")  # launch scripts
SCRIPT = os.path.join(HERE, "ds_train.py")
TAU = 0.05  # ds_train.TAU
_TOL = 1e-5  # float32 rounding of a projected norm


@pytest.fixture(scope="module")
def rows_file(cot_rows, tmp_path_factory):
    path = tmp_path_factory.mktemp("ds_rows") / "rows.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in cot_rows[:8]))
    return str(path)


def _run(cmd, env):
    result = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **env}, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]


def _launch(out, stage, *options, model_dir, rows, env):
    """Two ZeRO ranks with batch 2 each; STAGE 0 is one process without DeepSpeed with batch 4 (the same data)."""
    args = [model_dir, rows, str(out), "2" if stage else "4", str(stage), *options]
    if stage:
        command = torchrun(2)
        _run([*command, SCRIPT, *args], env)
        return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
    _run([sys.executable, SCRIPT, *args], env)
    return [torch.load(out / "rank0.pt", weights_only=False)]


@pytest.fixture(scope="module")
def single(llama_dir, rows_file, deepspeed_env, tmp_path_factory):
    """mode -> the one-process run without DeepSpeed, built on first use."""
    runs = {}

    def get(mode):
        if mode not in runs:
            out = tmp_path_factory.mktemp(f"ds_single_{mode}")
            runs[mode] = _launch(out, 0, "--mode", mode, model_dir=llama_dir, rows=rows_file, env=deepspeed_env)[0]
        return runs[mode]

    return get


def _check_against_one_process(ranks, one):
    """What every ZeRO run must show: two ranks, the one-process step, projections within tau that really scaled."""
    assert ranks[0]["engine"] == "DeepSpeedEngine" and ranks[0]["world_size"] == 2  # no silent one-process run

    # Masked loss and gradient equal the one-process run: batch 2 x 2 ranks = batch 4. SGD makes the first step's
    # update exactly -lr * gradient (LoRA: lora_B from 0, whose A has no gradient there; full FT: every weight).
    for ds_w, one_w in zip(ranks[0]["pre"][0], one["pre"][0], strict=True):
        torch.testing.assert_close(ds_w, one_w, rtol=1e-4, atol=1e-7)
    losses = [[e["loss"] for e in run["logs"] if "loss" in e] for run in (ranks[0], one)]
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)

    for rank in ranks:
        for post in rank["post"]:  # after every projection: from the fp32 masters and from the module copies
            assert max(post["master"]) <= TAU * (1 + _TOL)
            assert max(post["module"]) <= TAU * (1 + _TOL)
            assert post["master_vs_module"] == 0.0  # the next forward trains on the projected weights
    # tau binds at every step (the norm before projection exceeds it), so every projection above really scaled.
    rows = [e for e in ranks[0]["logs"] if "slowed/max_delta_norm" in e]
    assert len(rows) == len(ranks[0]["post"]) == 3
    assert all(e["slowed/max_delta_norm"] > TAU and e["slowed/layers_projected"] > 0 for e in rows)
    fraction = [
        [e["slowed/masked_fraction"] for e in run["logs"] if "slowed/masked_fraction" in e] for run in (ranks[0], one)
    ]
    assert fraction[0] == pytest.approx(fraction[1], rel=1e-9)  # masking counts reduced over ranks


@pytest.mark.slow
@pytest.mark.parametrize("stage", [2, 3])
def test_zero_lora_matches_one_process(stage, single, llama_dir, rows_file, deepspeed_env, tmp_path):
    from safetensors.torch import load_file

    ranks = _launch(tmp_path, stage, model_dir=llama_dir, rows=rows_file, env=deepspeed_env)
    _check_against_one_process(ranks, single("lora"))

    # The same adapter on both ranks, bit for bit, and in the saved adapter.
    saved = load_file(tmp_path / "saved" / "adapter_model.safetensors")
    assert len(saved) == len(ranks[0]["weights"]) > 0
    for name, value in ranks[0]["weights"].items():
        assert torch.equal(value, ranks[1]["weights"][name]), name
        assert torch.equal(saved[name.replace(".lora_A", ".lora_A.weight").replace(".lora_B", ".lora_B.weight")], value)


@pytest.mark.slow
@pytest.mark.parametrize("stage", [2, 3])
def test_zero_full_fine_tuning_matches_one_process(stage, single, llama_dir, rows_file, deepspeed_env, tmp_path):
    """Every weight trains; each is projected against its start (ZeRO-3: taken one gathered parameter at a time
    from the zero.Init partitions at attach time)."""
    from safetensors.torch import load_file

    options = ("--mode", "full")
    ranks = _launch(tmp_path, stage, *options, model_dir=llama_dir, rows=rows_file, env=deepspeed_env)
    _check_against_one_process(ranks, single("full"))
    assert len(ranks[0]["post"][0]["master"]) == 21  # every tensor of the 2-layer model, embeddings and head too

    saved = load_file(tmp_path / "saved" / "model.safetensors")
    assert set(saved) == set(ranks[0]["weights"])
    for name, value in ranks[0]["weights"].items():
        assert torch.equal(value, ranks[1]["weights"][name]), name
        assert torch.equal(saved[name].float(), value), name


@pytest.mark.slow
def test_zero2_resume_mid_epoch_matches_uninterrupted_run(llama_dir, rows_file, deepspeed_env, tmp_path):
    """LoRA under ZeRO-2 with AdamW (whose state, in ZeRO's own checkpoint, must come back too), a checkpoint every
    step. 8 rows at batch 2 x 2 ranks are 2 steps an epoch, so checkpoint-1 is mid-epoch. The resumed run starts
    from the uninterrupted run's own checkpoint-1, which that run wrote before its step 2: what an interruption
    after step 1 leaves behind."""
    from safetensors.torch import load_file

    from slowed_plugin.core.slow_tuning import lora_delta_norm

    adam = ("--optim", "adamw_torch", "--lr", "0.01")
    common = dict(model_dir=llama_dir, rows=rows_file, env=deepspeed_env)
    whole = _launch(tmp_path / "whole", 2, "--save-steps", "1", *adam, **common)
    checkpoint = tmp_path / "whole" / "run" / "checkpoint-1"
    resumed = _launch(tmp_path / "resumed", 2, "--resume", str(checkpoint), *adam, **common)

    assert [p["step"] for p in resumed[0]["post"]] == [2, 3]  # it trained steps 2 and 3 only, into epoch 2
    for rank in (0, 1):
        for name, value in whole[rank]["weights"].items():
            torch.testing.assert_close(resumed[rank]["weights"][name], value, rtol=0, atol=1e-6)
    losses = [[e["loss"] for e in run[0]["logs"] if "loss" in e] for run in (whole, resumed)]
    assert losses[1][-2:] == pytest.approx(losses[0][-2:], rel=1e-6)
    # tau binds at every step, and every checkpoint holds a projected adapter.
    assert all(e["slowed/layers_projected"] > 0 for e in whole[0]["logs"] if "slowed/layers_projected" in e)
    scaling = 8 / 4  # lora_alpha / r in ds_train.py
    for step in (1, 2, 3):
        saved = load_file(tmp_path / "whole" / "run" / f"checkpoint-{step}" / "adapter_model.safetensors")
        norms = [
            float(lora_delta_norm(saved[key], saved[key.replace("lora_A", "lora_B")], scaling))
            for key in saved
            if "lora_A" in key
        ]
        assert len(norms) == 14 and max(norms) <= TAU * (1 + _TOL), (step, norms)
