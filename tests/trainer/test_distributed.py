"""Two processes (torchrun, gloo, CPU) give the single-process gradient, identical adapters and global metrics."""

import json
import os
import subprocess
import sys

import pytest
import torch
from ports import torchrun

HERE = os.path.join(os.path.dirname(os.path.dirname(__file__)), "support")  # launch scripts


def _run(cmd, env_extra=None):
    # SLOWED_COMPILE=0: these check the distributed wiring; the compiled kernels have tests of their own.
    env = {"SLOWED_COMPILE": "0", **os.environ, "OMP_NUM_THREADS": "1", **(env_extra or {})}
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.slow
def test_two_ranks_match_one_process(llama_dir, cot_rows, tmp_path):
    data = tmp_path / "rows.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in cot_rows[:4]))
    script = os.path.join(HERE, "ddp_train.py")
    _run([sys.executable, script, llama_dir, str(data), str(tmp_path / "single"), "4"])
    _run(torchrun(2) + [script] + [llama_dir, str(data), str(tmp_path / "ddp"), "2"])
    single = torch.load(tmp_path / "single" / "rank0.pt", weights_only=False)
    ranks = [torch.load(tmp_path / "ddp" / f"rank{r}.pt", weights_only=False) for r in (0, 1)]

    # Token averaging across devices with the kept count: the DDP gradient is the one-process gradient.
    for name, grad in single["grads"].items():
        torch.testing.assert_close(ranks[0]["grads"][name], grad, rtol=1e-4, atol=1e-6)
    # Every rank projected to the same adapter, bit for bit.
    for name, value in ranks[0]["adapter"].items():
        assert torch.equal(value, ranks[1]["adapter"][name]), name

    # Masking metrics are reduced across ranks: the global fraction, as in the single process.
    def fraction(run):
        return [e["slowed/masked_fraction"] for e in run["logs"] if "slowed/masked_fraction" in e][0]

    assert fraction(ranks[0]) == pytest.approx(fraction(single), rel=1e-9)
    assert any(e.get("slowed/layers_projected", 0) > 0 for e in ranks[0]["logs"])


@pytest.mark.slow
def test_gradient_anchor_on_two_ranks_matches_one_process(llama_dir, cot_rows, tmp_path):
    """The anchor rows are generated once (rank 0 first, then read from its cache) and every rank projects with
    the same reference batch: the projected gradient is the one-process one, the adapters identical."""
    data = tmp_path / "rows.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in cot_rows[:4]))
    script = os.path.join(HERE, "ddp_train.py")
    _run([sys.executable, script, llama_dir, str(data), str(tmp_path / "single"), "4", "gradient"])
    _run(torchrun(2) + [script] + [llama_dir, str(data), str(tmp_path / "ddp"), "2", "gradient"])
    single = torch.load(tmp_path / "single" / "rank0.pt", weights_only=False)
    ranks = [torch.load(tmp_path / "ddp" / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
    assert ranks[0]["anchor"] == ranks[1]["anchor"] == single["anchor"]
    # 4 steps: the constraint projected at least one of them, at the same steps in both runs.
    assert ranks[0]["projected"] == ranks[1]["projected"] == single["projected"] > 0
    for name, grad in single["grads"].items():
        torch.testing.assert_close(ranks[0]["grads"][name], grad, rtol=1e-4, atol=1e-6)
    for name, value in single["adapter"].items():
        assert torch.equal(ranks[0]["adapter"][name], ranks[1]["adapter"][name]), name
        # After 4 AdamW steps the float rounding of the gradient reduction has grown to a few 1e-6.
        torch.testing.assert_close(ranks[0]["adapter"][name], value, rtol=1e-4, atol=2e-5)


@pytest.mark.slow
def test_slow_tuning_on_fsdp2_shards_matches_unsharded(llama_dir, tmp_path):
    # The Trainer does not run FSDP on CPU, so this drives torch's own FSDP2 (`fully_shard`, DTensor
    # parameters, gloo) directly: the tuner is built before sharding, as under accelerate.
    _run(torchrun(2) + [os.path.join(HERE, "fsdp_slow_tuning.py"), llama_dir, str(tmp_path)])
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
    for kind in ("lora", "full"):
        run = ranks[0][kind]
        assert run["sharded"] > 0  # the trainable parameters really were DTensor shards
        assert run["projected"] > 0 and float(run["before"].max()) > 0.5
        assert torch.all(run["after"] <= 0.5 * (1 + 1e-5))
        for name, value in run["state"].items():
            assert torch.equal(value, ranks[1][kind]["state"][name]), name  # same on every rank
            torch.testing.assert_close(value, run["reference"][name], rtol=0, atol=1e-6)  # = unsharded


@pytest.mark.slow
def test_masked_loss_on_fsdp2_shards_matches_one_process(llama_dir, tmp_path):
    # torch's own FSDP2 on a 2-process gloo mesh (the Trainer runs no FSDP on CPU), full fine-tuning so that the
    # head's weight trains: each rank holds half of a 4-row batch. `head` makes lm_head an FSDP unit of its own,
    # whose weight the hidden-states loss would otherwise read as this rank's DTensor shard.
    _run(torchrun(2) + [os.path.join(HERE, "fsdp_masking.py"), llama_dir, str(tmp_path)])
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
    one = ranks[0]["reference"]
    assert one["path"] == "hidden_states" and one["dropped"] > 0
    for layout in ("root", "head"):
        run = ranks[0][layout]
        assert run["path"] == "hidden_states"  # the loss read the head's weight, not the model's logits
        assert run["head_is_shard"]  # between steps lm_head.weight is a DTensor shard
        assert run["dropped"] == one["dropped"]  # the same targets masked, summed over ranks
        torch.testing.assert_close(run["loss"], one["loss"], rtol=1e-6, atol=0)
        assert set(run["grads"]) == set(one["grads"])
        for name, grad in run["grads"].items():
            torch.testing.assert_close(grad, one["grads"][name], rtol=1e-5, atol=1e-7, msg=f"{layout}: {name}")
            assert torch.equal(grad, ranks[1][layout]["grads"][name]), name
