"""The real ``axolotl train`` with SLowEDPlugin, on CPU, offline, on tiny local models.

Five runs start together from ``recipes/tiny-cpu.yaml`` (each single-threaded) and every assertion
reads what a run left on disk: its log, its last checkpoint's ``trainer_state.json``, its saved
adapter or model.

- ``plain``:  the recipe without SLowED (LoRA, alpaca, train_on_inputs false, GA 2, val_set_size 0.1);
- ``slowed``: the recipe itself, tau 0.05 and mask_ratio 0.2;
- ``off``:    the plugin listed with ``{tau: null, mask_ratio: 0}``;
- ``qlora``:  4-bit QLoRA on a tiny Qwen2, chat_template data, sample packing, GA 2;
- ``full``:   full fine-tuning of the tiny Llama, sample packing, GA 2.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from axolotl_helpers import CHAT_DATASET, load_recipe, seeded, start_runs, without_slowed

pytestmark = pytest.mark.slow

TAU = 0.05
MASK_RATIO = 0.2
FULL_MASK_RATIO = 0.25
# floor(k·n)/n of an example with n targets lies in (k - 1/n, k]; every bundled completion has n >= 10.
PER_EXAMPLE_SLACK = 0.1
_TOL = 1e-5  # float32 rounding of a projected norm


def _lora_free(config: dict) -> dict:
    return {k: v for k, v in config.items() if not (k.startswith("lora_") or k == "adapter")}


def _qlora_mask_ratio(tiny: dict) -> float:
    """A ratio so small that no single example has a target to drop (k·n < 1 for every example),
    while every packed row holds several times 1/k targets: any drop means a scope crossed a boundary."""
    from transformers import AutoTokenizer

    from slowed_plugin.data import cot_tiny_rows

    tokenizer = AutoTokenizer.from_pretrained(tiny["qwen2"])
    longest = max(len(tokenizer(r["completion"], add_special_tokens=False)["input_ids"]) for r in cot_tiny_rows())
    return 1.0 / (longest + 4)  # + end-of-turn tokens the template may add to the targets


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, tiny_assets):
    workdir = tmp_path_factory.mktemp("axolotl-e2e")
    paths = tiny_assets(workdir)
    return {"workdir": workdir, **paths}


@pytest.fixture(scope="module")
def runs(tiny):
    recipe = load_recipe()
    assert recipe["slowed"] == {"tau": TAU, "mask_ratio": MASK_RATIO, "mask_scope": "sequence"}

    def named(name: str, config: dict) -> dict:
        return {**config, "output_dir": f"./outputs/{name}", "dataset_prepared_path": f"./prepared/{name}"}

    packed = {"sample_packing": True, "micro_batch_size": 1, "num_epochs": 1, "val_set_size": 0.0}
    packed_recipe = {k: v for k, v in recipe.items() if k != "eval_steps"}
    configs = {
        # Same LoRA start in these three (Axolotl does not seed before creating adapters), so they compare step by step.
        "plain": named("plain", seeded(without_slowed(recipe))),
        "slowed": named("slowed", seeded(recipe)),
        "off": named("off", seeded({**recipe, "slowed": {"tau": None, "mask_ratio": 0}})),
        "qlora": named(
            "qlora",
            {
                **packed_recipe,
                **packed,
                "base_model": "./slowed-tiny/qwen2",
                "adapter": "qlora",
                "load_in_4bit": True,
                "datasets": [CHAT_DATASET],
                "slowed": {"tau": TAU, "mask_ratio": _qlora_mask_ratio(tiny)},
            },
        ),
        "full": named(
            "full",
            {**_lora_free(packed_recipe), **packed, "slowed": {"tau": TAU, "mask_ratio": FULL_MASK_RATIO}},
        ),
    }
    return start_runs(tiny["workdir"], configs)


def _max_norm_excess(norms: dict[str, float]) -> float:
    return max(norms.values()) - TAU * (1 + _TOL)


# ---------------------------------------------------------------------------------------------- LoRA


def test_startup_line_says_slowed_is_on(runs):
    log = runs["slowed"].check().log
    line = f"SLowED: Slow Tuning tau={TAU:g} (layer, every epoch); Low-Entropy Masking mask_ratio={MASK_RATIO:g} (scope sequence)"
    assert log.count(line) == 1  # one console: the plugin's line, not a second copy from the callback
    assert "[axolotl.integrations.slowed]" in log
    assert log.count("SLowED: trained weights satisfy max ||ΔW||_F") == 1
    assert "SLowED:" not in runs["plain"].check().log


def test_every_saved_lora_layer_is_within_tau(runs):
    slowed = runs["slowed"].check().adapter_norms()
    plain = runs["plain"].check().adapter_norms()
    assert len(slowed) == len(plain) == 2 * 7  # 2 layers x (q, k, v, o, gate, up, down)
    assert _max_norm_excess(plain) > 0, "tau must bind in this test: the plain adapter should exceed it"
    assert _max_norm_excess(slowed) <= 0, slowed
    projected = [e["slowed/layers_projected"] for e in runs["slowed"].train_logs if "slowed/layers_projected" in e]
    assert projected and max(projected) > 0  # logged at each epoch's projection


def test_logged_masked_fraction_matches_mask_ratio(runs):
    fractions = [e["slowed/masked_fraction"] for e in runs["slowed"].check().train_logs]
    assert len(fractions) == len(runs["slowed"].train_logs) > 10  # logged at every step
    assert all(MASK_RATIO - PER_EXAMPLE_SLACK < f <= MASK_RATIO + 1e-9 for f in fractions), fractions
    assert abs(sum(fractions) / len(fractions) - MASK_RATIO) < 0.05


def test_training_loss_differs_from_plain_and_eval_loss_stays_unmasked(runs):
    slowed, plain = runs["slowed"].check(), runs["plain"].check()
    # Step 1 starts from identical weights on identical batches: only the masked loss can differ.
    assert slowed.train_logs[0]["loss"] != pytest.approx(plain.train_logs[0]["loss"], rel=1e-6)
    # Axolotl evaluates before the first step (eval_on_start): the same model, so an unmasked eval loss is equal.
    assert slowed.eval_logs[0]["step"] == plain.eval_logs[0]["step"] == 0
    assert slowed.eval_logs[0]["eval_loss"] == plain.eval_logs[0]["eval_loss"]
    assert len(slowed.eval_logs) == len(plain.eval_logs) > 1


def test_both_mechanisms_off_trains_exactly_like_plain(runs):
    off, plain = runs["off"].check(), runs["plain"].check()
    assert "SLowED: Slow Tuning off; Low-Entropy Masking off" in off.log

    def history(run):
        keys = ("step", "loss", "grad_norm", "eval_loss")
        return [{k: e[k] for k in keys if k in e} for e in run.state()["log_history"]]

    assert history(off) == history(plain)
    assert not any(k.startswith("slowed/") for e in off.train_logs for k in e)
    assert off.adapter_norms() == plain.adapter_norms()


# ---------------------------------------------------------------------------------------------- QLoRA


def test_qlora_packed_chat_run_masks_within_each_packed_example(runs):
    run = runs["qlora"].check()
    with open(run.output_dir / "config.json", encoding="utf-8") as handle:
        quantization = json.load(handle).get("quantization_config", {})
    assert quantization.get("load_in_4bit") is True, quantization
    assert "Low-Entropy Masking mask_ratio=" in run.log

    logs = run.train_logs
    assert len(logs) >= 3
    k = run.config["slowed"]["mask_ratio"]
    rows_per_step = run.config["micro_batch_size"] * run.config["gradient_accumulation_steps"]
    trainable = [0] + [e["tokens/trainable"] for e in logs]
    targets_per_row = [(b - a) / rows_per_step for a, b in zip(trainable, trainable[1:], strict=False)]
    # A packed row holds enough targets that one scope per row would drop some ...
    assert min(targets_per_row) * k > 2, (targets_per_row, k)
    # ... but no example has any to drop: the `sequence` scope follows the packed boundaries.
    assert [e["slowed/masked_fraction"] for e in logs] == [0.0] * len(logs)
    assert _max_norm_excess(run.adapter_norms()) <= 0


# ---------------------------------------------------------------------------------------------- full fine-tuning


def test_full_finetune_packed_run_bounds_every_tensor_and_masks(runs):
    from safetensors.torch import load_file

    run = runs["full"].check()
    start = load_file(str(run.workdir / "slowed-tiny" / "llama" / "model.safetensors"))
    trained = load_file(str(run.output_dir / "model.safetensors"))
    assert set(trained) == set(start)
    deltas = {name: float(torch.linalg.vector_norm(trained[name].float() - start[name].float())) for name in start}
    assert max(deltas.values()) <= TAU * (1 + _TOL), deltas
    assert sum(d > TAU / 2 for d in deltas.values()) > len(deltas) / 2  # the weights did move, up to the bound

    fractions = [e["slowed/masked_fraction"] for e in run.train_logs]
    assert fractions and all(FULL_MASK_RATIO - PER_EXAMPLE_SLACK < f <= FULL_MASK_RATIO + 1e-9 for f in fractions)
    assert all(math.isfinite(e["loss"]) for e in run.train_logs)


def test_e2e_wall_time_is_within_budget(runs):
    slowest = max(run.seconds for run in runs.values())
    print({name: round(run.seconds, 1) for name, run in runs.items()})
    assert slowest < 240
