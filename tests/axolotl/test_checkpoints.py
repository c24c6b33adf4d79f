"""The real ``axolotl train``: every checkpoint satisfies the Slow Tuning bound with ``saves_per_epoch: 1`` and
``2``, and the projection metrics land on the row of the epoch's last step (epoch 1.0, not the next row)."""

from __future__ import annotations

import pytest
from axolotl_helpers import load_recipe, start_runs

pytestmark = pytest.mark.slow

TAU = 0.05


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_assets):
    workdir = tmp_path_factory.mktemp("axolotl-checkpoints")
    tiny_assets(workdir)
    recipe = {k: v for k, v in load_recipe().items() if k not in ("save_strategy", "save_total_limit", "eval_steps")}
    recipe.update(val_set_size=0.0, learning_rate=0.02)
    configs = {
        f"saves{n}": {
            **recipe,
            "saves_per_epoch": n,
            "output_dir": f"./outputs/saves{n}",
            "dataset_prepared_path": f"./prepared/saves{n}",
        }
        for n in (1, 2)
    }
    return start_runs(workdir, configs)


@pytest.mark.parametrize("name", ["saves1", "saves2"])
def test_every_checkpoint_is_inside_the_ball(runs, name):
    run = runs[name].check()
    checkpoints = run.checkpoints()
    assert len(checkpoints) >= 2 * int(name[-1])  # two epochs
    largest = [max(run.adapter_norms(folder).values()) for folder in checkpoints]
    assert all(norm <= TAU * (1 + 1e-5) for norm in largest), dict(
        zip([c.name for c in checkpoints], largest, strict=True)
    )
    # ... and the bound binds: before projection the adapters were far outside.
    assert max(e["slowed/max_delta_norm"] for e in run.state()["log_history"] if "slowed/max_delta_norm" in e) > TAU


def test_projection_metrics_land_on_the_epoch_end_row(runs):
    rows = [e for e in runs["saves1"].check().state()["log_history"] if "slowed/max_delta_norm" in e]
    assert [round(e["epoch"], 6) for e in rows] == [1.0, 2.0]
    assert all("loss" in e for e in rows)  # the step's own training row, not a row of its own
