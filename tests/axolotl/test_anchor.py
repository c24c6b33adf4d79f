"""The safety anchor through the real ``axolotl train`` (CPU, offline, tiny local models).

Four runs start together from ``recipes/tiny-cpu.yaml``:

- ``replay``: the recipe (LoRA, alpaca, tau and masking on) plus a replay anchor at ratio 0.2 and the safety
  subspace (issue 29), 2 epochs;
- ``packed``: chat_template data with sample packing, a replay anchor and masking;
- ``gradient``: the same data, the anchor in gradient mode, SLowED off;
- ``kl``: the same data, the anchor in KL mode (issue 29), SLowED off.
"""

from __future__ import annotations

import json
import math
import re

import pytest
from axolotl_helpers import CHAT_DATASET, load_recipe, seeded, start_runs

from slowed_plugin.anchor import replay_row_count
from slowed_plugin.data import cot_tiny_rows

pytestmark = pytest.mark.slow

TAU = 0.05
# Stand-ins in the tiny tokenizer's vocabulary (every bundled row is also a training row of the recipe; what
# matters here is the wiring, not what the prompts say).
_PROMPTS = [row["prompt"] for row in cot_tiny_rows()[:12]]
ANCHOR = {"prompts": _PROMPTS[:6], "benign_prompts": _PROMPTS[6:], "max_new_tokens": 8, "batch_size": 8}
SUBSPACE = {"prompts": _PROMPTS[:6], "benign_prompts": _PROMPTS[6:]}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_assets):
    workdir = tmp_path_factory.mktemp("axolotl-anchor")
    tiny_assets(workdir)
    recipe = load_recipe()

    def named(name: str, config: dict) -> dict:
        return {**config, "output_dir": f"./outputs/{name}", "dataset_prepared_path": f"./prepared/{name}"}

    chat = {
        "datasets": [CHAT_DATASET],
        "sample_packing": True,
        "micro_batch_size": 1,
        "num_epochs": 1,
        "val_set_size": 0.0,
    }
    configs = {
        "replay": named(
            "replay",
            seeded(
                {
                    **recipe,
                    "slowed": {
                        **recipe["slowed"],
                        "safety_anchor": {**ANCHOR, "ratio": 0.2},
                        "safety_subspace": SUBSPACE,
                    },
                }
            ),
        ),
        "packed": named(
            "packed",
            seeded(
                {
                    **{k: v for k, v in recipe.items() if k != "eval_steps"},
                    **chat,
                    "slowed": {"tau": None, "mask_ratio": 0.2, "safety_anchor": {**ANCHOR, "ratio": 0.2}},
                }
            ),
        ),
        "gradient": named(
            "gradient",
            seeded(
                {
                    **{k: v for k, v in recipe.items() if k != "eval_steps"},
                    **chat,
                    "slowed": {"tau": None, "mask_ratio": 0, "safety_anchor": {**ANCHOR, "mode": "gradient"}},
                }
            ),
        ),
        "kl": named(
            "kl",
            seeded(
                {
                    **{k: v for k, v in recipe.items() if k != "eval_steps"},
                    **chat,
                    "slowed": {"tau": None, "mask_ratio": 0, "safety_anchor": {**ANCHOR, "mode": "kl"}},
                }
            ),
        ),
    }
    return start_runs(workdir, configs)


def _cached_rows(run) -> list[dict]:
    files = sorted((run.output_dir / "slowed-anchor").glob("anchor-*.json"))
    assert len(files) == 1, files
    with open(files[0], encoding="utf-8") as handle:
        return json.load(handle)["rows"]


def test_replay_rows_are_generated_cached_and_trained_for_every_epoch(runs):
    run = runs["replay"].check()
    rows = _cached_rows(run)
    n_train = math.ceil(len(cot_tiny_rows()) * (1 - run.config["val_set_size"]))  # Axolotl's split
    # Axolotl's split rounds one way or the other; the anchor's count follows the trained set.
    assert len(rows) in {replay_row_count(n, 0.2) for n in (n_train - 1, n_train)}
    assert {r["kind"] for r in rows} == {"harmful", "benign"}
    assert f"SLowED: safety anchor: {len(rows)} rows" in run.log
    # Axolotl fixed max_steps from the dataset before the rows existed; it is counted again for the mixed set, and
    # the run trains all of it (without the recount it would stop after the unanchored count). Issue 22: the count
    # is of whole epochs as the trainer runs them (each ends on a short step), not Axolotl's ceil(rows * epochs /
    # batch), which ran the epochs together and stopped one step short (here 27 of 28, epoch 1.96).
    recount = re.search(r"SLowED: safety anchor: (\d+) optimizer steps with the anchor rows", run.log)
    assert recount, run.log[-2000:]
    micro, accumulation = run.config["micro_batch_size"], run.config["gradient_accumulation_steps"]
    epochs = run.config["num_epochs"]
    unanchored = math.ceil(n_train * epochs / (micro * accumulation))  # Axolotl's formula without packing
    mixed = [n + len(rows) for n in (n_train - 1, n_train)]  # Axolotl's split rounds one way or the other
    assert any(math.ceil(n * epochs / (micro * accumulation)) < int(recount.group(1)) for n in mixed)  # the case
    whole = {epochs * math.ceil(math.ceil(n / micro) / accumulation) for n in mixed}
    assert run.state()["global_step"] == int(recount.group(1)) > unanchored and run.state()["global_step"] in whole
    assert run.train_logs[-1]["epoch"] == epochs  # the last step of the last epoch ran
    assert max(run.adapter_norms().values()) <= TAU * (1 + 1e-5)  # Slow Tuning still holds beside the anchor


def test_replay_rows_are_packed_with_the_chat_data(runs):
    run = runs["packed"].check()
    rows = _cached_rows(run)
    assert f"SLowED: safety anchor: {len(rows)} rows" in run.log
    recount = re.search(r"SLowED: safety anchor: (\d+) optimizer steps with the anchor rows", run.log)
    assert recount and run.state()["global_step"] == int(recount.group(1))
    fractions = [e["slowed/masked_fraction"] for e in run.train_logs]
    assert fractions and all(0 < f <= 0.2 + 1e-9 for f in fractions)  # masking runs on the packed rows


def test_gradient_mode_with_packed_chat_data_constrains_every_step(runs):
    run = runs["gradient"].check()
    rows = _cached_rows(run)
    assert len(rows) == len(_PROMPTS)  # gradient mode: every prompt once
    assert "as the gradient constraint's reference" in run.log
    steps = run.state()["global_step"]
    assert steps > 0
    assert f"of {steps} optimizer steps" in run.log  # the constraint ran at every one of them


def test_the_safety_subspace_projects_beside_the_ball_and_the_anchor(runs):
    """Issue 29: `slowed.safety_subspace` under the real `axolotl train`: directions from the starting model, a
    projection at every epoch end before the ball, its share in the logs, and the ball still holds."""
    run = runs["replay"].check()
    assert "SLowED: safety subspace:" in run.log
    end = re.search(r"SLowED: safety subspace: (\d+) projections this run removed up to", run.log)
    assert end and int(end.group(1)) >= run.config["num_epochs"], run.log[-2000:]  # each epoch's end, and saves
    removed = [e["slowed/subspace_removed_max"] for e in run.train_logs if "slowed/subspace_removed_max" in e]
    assert removed and all(0 <= r <= 1 for r in removed)
    assert max(run.adapter_norms().values()) <= TAU * (1 + 1e-5)


def test_kl_mode_trains_every_step_against_the_starting_model(runs):
    """Issue 29: `safety_anchor.mode: kl` under the real `axolotl train`: the anchor's rows are the starting model's
    answers, and the KL term ran at every optimizer step."""
    run = runs["kl"].check()
    assert len(_cached_rows(run)) > 0
    steps = run.state()["global_step"]
    line = re.search(r"KL\(starting model \|\| model\) per answer token on the anchor batches: \S+ at the first of "
                     r"(\d+) optimizer steps", run.log)  # fmt: skip
    assert line and int(line.group(1)) == steps > 0, run.log[-2000:]
