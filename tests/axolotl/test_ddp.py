"""The real ``axolotl train`` with SLowEDPlugin on two CPU processes (torchrun, DDP over gloo).

Axolotl 0.19 has no supported CPU multi-process path; two things make one for this test (see
``tests/axolotl_cpu_ddp.py``):

- ``ACCELERATE_USE_CPU=true`` in the environment, accelerate's own switch, which transformers' ``TrainingArguments``
  reads: without it accelerate sets up ``DistributedType.NO`` on a CPU-only build, and each rank silently trains
  alone, with no gradient all-reduce;
- the test-only plugin ``axolotl_cpu_ddp.CpuDdpPlugin``, whose ``load_datasets`` hook replaces the
  ``{"": LOCAL_RANK}`` device map that Axolotl's ``normalize_config`` forces whenever ``WORLD_SIZE > 1`` (and
  that transformers turns into ``torch.device(0)``) with ``{"": "cpu"}``. It also saves every rank's adapter.

The launch is what ``axolotl train cfg.yaml --launcher torchrun -- --standalone --nproc_per_node 2`` runs,
without the extra launcher process.
"""

from __future__ import annotations

import math

import pytest
import torch
from axolotl_cpu_ddp import PLUGIN, rank_file
from axolotl_helpers import Run, load_recipe

pytestmark = pytest.mark.slow

TAU = 0.05
MASK_RATIO = 0.2
_TOL = 1e-5  # float32 rounding of a projected norm


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_assets):
    workdir = tmp_path_factory.mktemp("axolotl-ddp")
    tiny_assets(workdir)
    recipe = load_recipe()
    config = {
        **{k: v for k, v in recipe.items() if k != "eval_steps"},
        "num_epochs": 1,  # one epoch ends in one projection; no evaluation: the run fits in ~30 s on 2 cores
        "val_set_size": 0.0,
        "plugins": [*recipe["plugins"], PLUGIN],
        "slowed": {"tau": TAU, "mask_ratio": MASK_RATIO},
        "output_dir": "./outputs/ddp",
        "dataset_prepared_path": "./prepared/ddp",
    }
    result = Run("ddp", workdir, config).start(processes=2).wait(timeout=300)
    print(f"axolotl train on 2 CPU ranks: {result.seconds:.1f} s")
    return result.check()


def _ranks(run):
    return [torch.load(rank_file(run.output_dir, rank), weights_only=False) for rank in (0, 1)]


def test_trainer_ran_ddp_over_gloo_on_two_cpu_processes(run):
    for rank, record in enumerate(_ranks(run)):
        assert record["rank"] == rank
        assert record["trainer"] == {
            "distributed_type": "DistributedType.MULTI_CPU",
            "num_processes": 2,
            "backend": "gloo",
        }


def test_adapters_are_identical_on_both_ranks_after_slow_tuning(run):
    first, second = (record["adapter"] for record in _ranks(run))
    assert len(first) == 2 * 7 * 2  # 2 layers x (q, k, v, o, gate, up, down) x (A, B)
    assert first.keys() == second.keys()
    for name, value in first.items():
        assert torch.equal(value, second[name]), name

    # What rank 0 saved is what both ranks hold, and every layer is within tau.
    from safetensors.torch import load_file

    saved = load_file(str(run.output_dir / "adapter_model.safetensors"))
    assert {name.replace(".default.", ".") for name in first} == set(saved)
    for name, value in first.items():
        assert torch.equal(saved[name.replace(".default.", ".")], value), name
    norms = run.adapter_norms()
    assert max(norms.values()) <= TAU * (1 + _TOL), norms


def test_masked_fraction_is_logged_and_projection_triggered(run):
    logs = run.train_logs
    assert logs and all("slowed/masked_fraction" in e for e in logs)
    assert all(0 < e["slowed/masked_fraction"] <= MASK_RATIO + 1e-9 for e in logs)
    assert any(e.get("slowed/layers_projected", 0) > 0 for e in logs)
    assert all(math.isfinite(e["loss"]) for e in logs)
