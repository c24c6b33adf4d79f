"""Slow Tuning and masking under DeepSpeed ZeRO-2 and ZeRO-3: two processes (torchrun, gloo, CPU) against one.

`tests/ds_train.py` trains TRL's SFTTrainer with LoRA and SLowEDCallback (projection every step, tau binding at
every step) for 3 steps with plain SGD, so that the first step's update is exactly -lr * gradient.
"""

import json
import os
import subprocess
import sys

import pytest
import torch

HERE = os.path.join(os.path.dirname(os.path.dirname(__file__)), "support")  # launch scripts


@pytest.fixture(scope="session")
def deepspeed_env(tmp_path_factory):
    """DeepSpeed's CPU accelerator, and one JIT build cache for its comm op per test session (unless one is set)."""
    try:
        import deepspeed  # noqa: F401
    except ImportError:  # no silent skip: the suite's set-up installs it
        pytest.fail("deepspeed is not installed: run `SLOWED_EXTRAS=...,deepspeed source scripts/setup.sh`")
    cache = os.environ.get("TORCH_EXTENSIONS_DIR") or str(tmp_path_factory.mktemp("torch_extensions"))
    return {"DS_ACCELERATOR": "cpu", "TORCH_EXTENSIONS_DIR": cache, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def rows_file(cot_rows, tmp_path_factory):
    path = tmp_path_factory.mktemp("ds_rows") / "rows.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in cot_rows[:8]))
    return str(path)


def _run(cmd, env):
    result = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **env}, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]


@pytest.fixture(scope="module")
def single(llama_dir, rows_file, deepspeed_env, tmp_path_factory):
    out = tmp_path_factory.mktemp("ds_single")
    _run([sys.executable, os.path.join(HERE, "ds_train.py"), llama_dir, rows_file, str(out), "4", "0"], deepspeed_env)
    return torch.load(out / "rank0.pt", weights_only=False)


@pytest.mark.slow
@pytest.mark.parametrize("stage", [2, 3])
def test_zero_matches_one_process(stage, single, llama_dir, rows_file, deepspeed_env, tmp_path):
    from safetensors.torch import load_file

    script = os.path.join(HERE, "ds_train.py")
    port = str(29620 + stage)
    _run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", port, script]
        + [llama_dir, rows_file, str(tmp_path), "2", str(stage)],
        deepspeed_env,
    )
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
    assert ranks[0]["engine"] == "DeepSpeedEngine" and ranks[0]["world_size"] == 2  # no silent one-process run
    tau = 0.05

    # Masked loss and gradient equal the one-process run: batch 2 x 2 ranks = batch 4. SGD from lora_B = 0 makes the
    # first step's lora_B exactly -lr * gradient (lora_A's gradient is 0 there).
    for ds_b, one_b in zip(ranks[0]["pre"][0], single["pre"][0], strict=True):
        torch.testing.assert_close(ds_b, one_b, rtol=1e-4, atol=1e-7)
    losses = [[e["loss"] for e in run["logs"] if "loss" in e] for run in (ranks[0], single)]
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)

    for rank in ranks:
        for post in rank["post"]:  # after every projection: from the fp32 masters and from the module copies
            assert max(post["master"]) <= tau * (1 + 1e-5)
            assert max(post["module"]) <= tau * (1 + 1e-5)
            assert post["master_vs_module"] == 0.0  # the next forward trains on the projected weights
    # tau binds at every step (the norm before projection exceeds it), so every projection above really scaled.
    rows = [e for e in ranks[0]["logs"] if "slowed/max_delta_norm" in e]
    assert len(rows) == len(ranks[0]["post"]) == 3
    assert all(e["slowed/max_delta_norm"] > tau and e["slowed/layers_projected"] > 0 for e in rows)
    fraction = [
        [e["slowed/masked_fraction"] for e in run["logs"] if "slowed/masked_fraction" in e]
        for run in (ranks[0], single)
    ]
    assert fraction[0] == pytest.approx(fraction[1], rel=1e-9)  # masking counts reduced over ranks

    # The same adapter on both ranks, bit for bit, and in the saved adapter.
    saved = load_file(tmp_path / "saved" / "adapter_model.safetensors")
    assert len(saved) == len(ranks[0]["adapter"]) > 0
    for name, value in ranks[0]["adapter"].items():
        assert torch.equal(value, ranks[1]["adapter"][name]), name
        assert torch.equal(saved[name.replace(".lora_A", ".lora_A.weight").replace(".lora_B", ".lora_B.weight")], value)
