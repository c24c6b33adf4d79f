"""The real ``axolotl train`` with ``deepspeed:`` (ZeRO-2 and ZeRO-3) and SLowEDPlugin on two CPU processes.

Both mechanisms on (`slowed: {tau, mask_ratio}`), torchrun, gloo, ``DS_ACCELERATOR=cpu``. Axolotl 0.19 + accelerate
1.13 run DeepSpeed on several CPU processes only with the test-only ``axolotl_cpu_ddp.CpuDeepSpeedPlugin`` (its
docstring says why; launched without ``ACCELERATE_USE_CPU``, which would silently turn DeepSpeed off); the test
checks that the trainer really ran a DeepSpeedEngine on 2 processes, so a fallback to DDP or to one process per rank
cannot pass.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from axolotl_cpu_ddp import DEEPSPEED_PLUGIN, rank_file
from axolotl_helpers import Run, load_recipe

pytestmark = pytest.mark.slow

TAU = 0.05
MASK_RATIO = 0.2
_TOL = 1e-5  # float32 rounding of a projected norm


@pytest.fixture(scope="module")
def assets(tmp_path_factory, tiny_assets):
    workdir = tmp_path_factory.mktemp("axolotl-deepspeed")
    tiny_assets(workdir)
    return workdir


@pytest.fixture(scope="module", params=[2, 3], ids=["zero2", "zero3"])
def run(request, assets, deepspeed_env):
    stage = request.param
    zero = {"stage": stage, **({"stage3_gather_16bit_weights_on_model_save": True} if stage == 3 else {})}
    # The shape of Axolotl's deepspeed_configs/zero{2,3}.json, without its GPU-only settings.
    ds_config = {
        "zero_optimization": zero,
        "bf16": {"enabled": "auto"},
        "fp16": {"enabled": "auto"},
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
        "train_batch_size": "auto",
        "train_micro_batch_size_per_gpu": "auto",
    }
    (assets / f"zero{stage}.json").write_text(json.dumps(ds_config))
    recipe = load_recipe()
    config = {
        **{k: v for k, v in recipe.items() if k != "eval_steps"},
        "num_epochs": 1,  # one epoch ends in one projection; no evaluation
        "val_set_size": 0.0,
        "plugins": [*recipe["plugins"], DEEPSPEED_PLUGIN],
        "slowed": {"tau": TAU, "mask_ratio": MASK_RATIO},
        "deepspeed": f"zero{stage}.json",
        "output_dir": f"./outputs/zero{stage}",
        "dataset_prepared_path": f"./prepared/zero{stage}",
    }
    result = Run(f"zero{stage}", assets, config).start(processes=2, env=deepspeed_env).wait(timeout=400)
    print(f"axolotl train, ZeRO-{stage}, on 2 CPU ranks: {result.seconds:.1f} s")
    return result.check()


def _ranks(run):
    return [torch.load(rank_file(run.output_dir, rank), weights_only=False) for rank in (0, 1)]


def test_trainer_ran_deepspeed_on_two_cpu_processes(run):
    for rank, record in enumerate(_ranks(run)):
        assert record["rank"] == rank
        assert record["engine"] == "DeepSpeedEngine"
        assert record["trainer"] == {
            "distributed_type": "DistributedType.DEEPSPEED",
            "num_processes": 2,
            "backend": "gloo",
        }


def test_adapters_are_identical_on_both_ranks_saved_and_within_tau(run):
    from safetensors.torch import load_file

    first, second = (record["adapter"] for record in _ranks(run))
    assert len(first) == 2 * 7 * 2  # 2 layers x (q, k, v, o, gate, up, down) x (A, B)
    for name, value in first.items():
        assert value.numel() > 0, name  # gathered, not a ZeRO-3 partition
        assert torch.equal(value, second[name]), name
    saved = load_file(str(run.output_dir / "adapter_model.safetensors"))
    assert {name.replace(".default.", ".") for name in first} == set(saved)
    for name, value in first.items():
        assert torch.equal(saved[name.replace(".default.", ".")], value), name
    norms = run.adapter_norms()
    assert len(norms) == 14 and max(norms.values()) <= TAU * (1 + _TOL), norms


def test_masked_fraction_is_logged_and_projection_triggered(run):
    logs = run.train_logs
    assert logs and all("slowed/masked_fraction" in e for e in logs)
    assert all(0 < e["slowed/masked_fraction"] <= MASK_RATIO + 1e-9 for e in logs)
    projections = [e for e in logs if "slowed/layers_projected" in e]
    assert projections and all(e["slowed/max_delta_norm"] > TAU for e in projections)  # tau binds
    assert all(math.isfinite(e["loss"]) for e in logs)
