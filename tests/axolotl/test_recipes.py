"""Every recipe in recipes/ against Axolotl's real schema, `slowed check`, and the docs against the config."""

from __future__ import annotations

import copy
import io
import logging
import re
from pathlib import Path

import pytest
import yaml
from axolotl_helpers import RECIPES, ROOT, without_slowed

from slowed_plugin import SLowEDConfig

RECIPE_FILES = sorted(RECIPES.glob("*.yaml"))
NAMES = [p.name for p in RECIPE_FILES]
PAPER_MODELS = {
    "qwen2.5-1.5b": "Qwen/Qwen2.5-1.5B-Instruct",
    "llama-3.2-1b": "meta-llama/Llama-3.2-1B-Instruct",
    "bloom-1.1b": "bigscience/bloom-1b1",
}
QLORA_BUDGETS_GIB = {"qlora-8gb.yaml": 8, "qlora-12gb.yaml": 12, "qlora-24gb.yaml": 24}
FAMILIES = {"Qwen/": "qwen2", "meta-llama/": "llama", "bigscience/bloom": "bloom", "./slowed-tiny/llama": "llama"}
DOCS = ROOT / "docs" / "axolotl.md"
README = RECIPES / "README.md"


def _load(path: Path) -> dict:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, tiny_assets):
    return tiny_assets(tmp_path_factory.mktemp("recipes"))


def test_the_expected_recipes_are_there():
    expected = {f"{m}-{kind}.yaml" for m in PAPER_MODELS for kind in ("slowed", "plain")}
    expected |= set(QLORA_BUDGETS_GIB) | {"tiny-cpu.yaml"}
    assert set(NAMES) == expected
    readme = README.read_text(encoding="utf-8")
    assert all(f"({name})" in readme for name in NAMES)  # each linked from the README


@pytest.mark.parametrize("name", NAMES)
def test_header_says_what_it_reproduces_and_the_hardware(name):
    text = (RECIPES / name).read_text(encoding="utf-8")
    header = text.split("\n\n", 1)[0]
    assert all(line.startswith("#") for line in header.splitlines()), header
    assert "Reproduces:" in header and "Hardware:" in header


@pytest.mark.parametrize("name", NAMES)
def test_recipe_validates_in_axolotl_with_its_plugins_loaded(name, tiny, tmp_path):
    """``load_cfg`` (plugins, schema, normalisation), offline: the hub model becomes a local tiny one of its family."""
    from axolotl.cli.config import load_cfg
    from axolotl.integrations.base import PluginManager
    from axolotl.utils.dict import DictDefault

    logging.getLogger("axolotl").setLevel(logging.WARNING)
    cfg = _load(RECIPES / name)
    family = next(v for k, v in FAMILIES.items() if cfg["base_model"].startswith(k))
    cfg["base_model"] = tiny[family]
    for dataset in cfg["datasets"]:
        dataset["path"] = tiny["chat"] if dataset["type"] == "chat_template" else tiny["alpaca"]
    cfg["output_dir"] = str(tmp_path / "out")
    cfg["dataset_prepared_path"] = str(tmp_path / "prepared")

    manager = PluginManager.get_instance()
    saved = dict(manager.plugins)
    manager.plugins.clear()
    try:
        validated = load_cfg(DictDefault(copy.deepcopy(cfg)))
    finally:
        manager.plugins.clear()
        manager.plugins.update(saved)
    assert validated.model_config_type == family
    if "slowed" in cfg:
        assert SLowEDConfig.from_value(validated.slowed) == SLowEDConfig.from_value(cfg["slowed"])
        assert validated.slowed is not None
    else:
        assert validated.get("slowed") is None


@pytest.mark.parametrize("name", NAMES)
def test_recipe_passes_slowed_check(name):
    from slowed_plugin.axolotl.check import check_recipe

    report = check_recipe(str(RECIPES / name))
    assert not report.errors, report.errors
    assert report.active == (not name.endswith("-plain.yaml"))


@pytest.mark.parametrize("model", sorted(PAPER_MODELS))
def test_paper_recipe_and_its_plain_twin(model):
    slowed, plain = _load(RECIPES / f"{model}-slowed.yaml"), _load(RECIPES / f"{model}-plain.yaml")
    assert slowed["base_model"] == PAPER_MODELS[model]
    # The paper's setting: LoRA rank 64 on every linear layer, 10 epochs, projection after each epoch.
    assert (slowed["adapter"], slowed["lora_r"], slowed["lora_target_linear"], slowed["num_epochs"]) == (
        "lora",
        64,
        True,
        10,
    )
    config = SLowEDConfig.from_value(slowed["slowed"])
    assert config.slow_tuning and config.masking and config.project_every == "epoch"
    # The twin is the same recipe without SLowED.
    assert slowed["output_dir"].endswith("-slowed") and plain["output_dir"].endswith("-plain")
    assert {**without_slowed(slowed), "output_dir": None} == {**plain, "output_dir": None}
    assert "axolotl.integrations.lm_eval.LMEvalPlugin" in plain["plugins"]


def test_lm_eval_tasks_exist_in_lm_evaluation_harness():
    from lm_eval.tasks import TaskManager

    tasks = {t for name in NAMES for t in _load(RECIPES / name).get("lm_eval_tasks", [])}
    assert {"bbh_cot_fewshot", "arc_challenge", "agieval_en"} <= tasks
    known = set(TaskManager().all_tasks)
    assert tasks <= known, tasks - known


@pytest.mark.parametrize("name", sorted(QLORA_BUDGETS_GIB))
def test_qlora_recipes_fit_their_gpu_by_the_estimate(name):
    from slowed_plugin.axolotl.memory import recipe_estimate

    cfg = _load(RECIPES / name)
    assert cfg["adapter"] == "qlora" and cfg["load_in_4bit"] is True
    assert cfg["gradient_checkpointing"] is True and "8bit" in cfg["optimizer"]
    # An "8 GB" card holds about 7.5 GiB free; keep a 1 GiB margin below what it holds.
    assert recipe_estimate(cfg).total <= QLORA_BUDGETS_GIB[name] * 0.93 - 1


def test_readme_documents_the_dataset_format():
    text = README.read_text(encoding="utf-8")
    example = re.search(r"```json\n(.*?)\n```", text, flags=re.S).group(1)
    import json

    row = json.loads(example)
    assert [m["role"] for m in row["messages"]] == ["user", "assistant"]
    for name in NAMES:
        cfg = _load(RECIPES / name)
        for dataset in cfg["datasets"]:
            if dataset["type"] == "chat_template" and name != "tiny-cpu.yaml":
                assert dataset["path"] in text and dataset["field_messages"] == "messages"


# ---------------------------------------------------------------------------------------------- docs/axolotl.md
# (the generated key table is checked in tests/test_repo.py)


# Each row of the compatibility table, as the config that turns the setting on.
COMPAT_ROWS = {
    "LoRA": {"adapter": "lora"},
    "QLoRA": {"adapter": "qlora", "load_in_4bit": True},
    "Full fine-tuning": {"adapter": None},
    "Sample packing": {"sample_packing": True},
    "Gradient accumulation": {"gradient_accumulation_steps": 4},
    "DoRA": {"adapter": "lora", "peft_use_dora": True},
    "Non-zero LoRA start": {"adapter": "lora", "peft_init_lora_weights": "pissa"},
    "ReLoRA": {"adapter": "lora", "relora": True},
    "Cut Cross Entropy plugin": {"plugins": ["axolotl.integrations.cut_cross_entropy.CutCrossEntropyPlugin"]},
    "Liger plugin, `liger_fused_linear_cross_entropy`": {
        "plugins": ["axolotl.integrations.liger.LigerPlugin"],
        "liger_fused_linear_cross_entropy": True,
    },
    "Liger plugin, other kernels": {"plugins": ["axolotl.integrations.liger.LigerPlugin"], "liger_rms_norm": True},
    "DeepSpeed": {"deepspeed": "zero2.json"},
    "FSDP2": {"fsdp_version": 2, "fsdp_config": {"reshard_after_forward": True}},
    "FSDP1": {"fsdp_config": {"fsdp_offload_params": False}},
    "Tensor parallel": {"tensor_parallel_size": 2},
    "Context parallel": {"context_parallel_size": 2},
    "DDP": {},
    "EAFT": {"use_eaft": True},
    "KD trainer": {"kd_trainer": True},
    "RL": {"rl": "dpo"},
}
E2E_TESTED = {"LoRA", "QLoRA", "Full fine-tuning", "Sample packing", "Gradient accumulation", "DDP", "DeepSpeed"}


def _compat_table() -> dict[str, tuple[str, str]]:
    text = DOCS.read_text(encoding="utf-8")
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[1] and not set(cells[1]) <= {"-"} and cells[0] != "Axolotl setting":
            rows[cells[0]] = (cells[1], cells[2])
    return rows


def test_compatibility_table_matches_what_the_plugin_accepts_and_refuses():
    from slowed_plugin.rules import axolotl_problems as incompatibilities

    table = _compat_table()
    matched = {row: next(name for name in table if name.startswith(row)) for row in COMPAT_ROWS}
    assert len(set(matched.values())) == len(table) == len(COMPAT_ROWS), sorted(table)
    for row, fragment in COMPAT_ROWS.items():
        tau_cell, mask_cell = table[matched[row]]
        cfg = {**fragment, "plugins": ["slowed_plugin.SLowEDPlugin", *fragment.get("plugins", [])]}
        for cell, config in (
            (tau_cell, SLowEDConfig(tau=10, mask_ratio=0)),
            (mask_cell, SLowEDConfig(tau=None, mask_ratio=0.2)),
        ):
            refused = bool(incompatibilities(cfg, config))
            assert refused == cell.startswith("refused"), (row, cell)
            assert cell.split(";")[0] in ("tested", "works (untested)", "refused"), cell
            assert (cell == "tested") == (row in E2E_TESTED), (row, cell)


def test_slowed_check_is_documented_with_every_failure_case():
    text = DOCS.read_text(encoding="utf-8")
    for phrase in (
        "not importable",
        "misspelled",
        "without a `slowed:` key",
        "Axolotl rejects",
        "axolotl slowed-check",
    ):
        assert phrase in text


def test_cli_check_prints_a_report_for_every_recipe_at_once():
    from slowed_plugin.axolotl.check import check_recipes

    out = io.StringIO()
    assert check_recipes([str(p) for p in RECIPE_FILES], stream=out) == 0
    assert out.getvalue().count("OK: SLowED will be active") == len(NAMES) - len(PAPER_MODELS)


# The shape of Axolotl's own Llama-3.2-1B QLoRA example (examples/llama-3/qlora-1b.yml): empty keys,
# explicit target modules, Axolotl-only keys. A user adds the two SLowED lines and nothing else.
AXOLOTL_EXAMPLE_SHAPED = """
base_model: NousResearch/Llama-3.2-1B
load_in_8bit: false
load_in_4bit: true
datasets:
  - path: teknium/GPT4-LLM-Cleaned
    type: alpaca
dataset_prepared_path: last_run_prepared
val_set_size: 0.1
output_dir: ./outputs/qlora-out
adapter: qlora
lora_model_dir:
sequence_len: 2048
sample_packing: true
eval_sample_packing: true
lora_r: 32
lora_alpha: 16
lora_dropout: 0.05
lora_target_modules: [gate_proj, down_proj, up_proj, q_proj, v_proj, k_proj, o_proj]
wandb_project:
gradient_accumulation_steps: 4
micro_batch_size: 2
num_epochs: 1
optimizer: adamw_bnb_8bit
lr_scheduler: cosine
learning_rate: 0.0002
bf16: auto
tf32: false
gradient_checkpointing: true
resume_from_checkpoint:
logging_steps: 1
attn_implementation: flash_attention_2
loss_watchdog_threshold: 5.0
loss_watchdog_patience: 3
warmup_ratio: 0.1
evals_per_epoch: 4
saves_per_epoch: 1
weight_decay: 0.0
deepspeed:
fsdp_config:
special_tokens:
  pad_token: "<|end_of_text|>"
"""
TWO_LINES = "plugins:\n  - slowed_plugin.SLowEDPlugin\nslowed: [10.0, 0.2]\n"


def test_an_axolotl_example_recipe_plus_two_lines_checks_and_validates(tmp_path, tiny):
    from axolotl.cli.config import load_cfg
    from axolotl.integrations.base import PluginManager
    from axolotl.utils.dict import DictDefault

    from slowed_plugin.axolotl.check import check_recipes

    recipe = tmp_path / "qlora-1b.yml"
    recipe.write_text(AXOLOTL_EXAMPLE_SHAPED + TWO_LINES)
    out = io.StringIO()
    assert check_recipes([str(recipe)], stream=out) == 0, out.getvalue()
    assert "OK: SLowED will be active" in out.getvalue()

    cfg = {**yaml.safe_load(recipe.read_text()), "base_model": tiny["llama"], "output_dir": str(tmp_path / "out")}
    cfg["datasets"] = [{"path": tiny["alpaca"], "ds_type": "json", "type": "alpaca"}]
    manager = PluginManager.get_instance()
    saved = dict(manager.plugins)
    manager.plugins.clear()
    try:
        validated = load_cfg(DictDefault(cfg))
    finally:
        manager.plugins.clear()
        manager.plugins.update(saved)
    assert SLowEDConfig.from_value(validated.slowed) == SLowEDConfig(tau=10.0, mask_ratio=0.2)


ANCHORED = [name for name in NAMES if "# safety_anchor:" in (RECIPES / name).read_text(encoding="utf-8")]


def test_the_slowed_and_qlora_recipes_offer_the_anchor():
    assert set(ANCHORED) == {n for n in NAMES if n.endswith("-slowed.yaml") or n.startswith("qlora-")}


@pytest.mark.parametrize("name", ANCHORED)
def test_the_commented_anchor_lines_are_a_valid_setting_once_uncommented(name):
    text = (RECIPES / name).read_text(encoding="utf-8")
    uncommented = re.sub(r"^  # (safety_anchor:|  \w+:)", r"  \1", text, flags=re.M)
    config = SLowEDConfig.from_value(yaml.safe_load(uncommented)["slowed"], key="slowed")
    assert config.anchored and config.safety_anchor["ratio"] == 0.05
    assert config.safety_anchor["prompts"] != config.safety_anchor["benign_prompts"]


def _commands(lines: list[str]) -> list[str]:
    return [line.split("  #", 1)[0].strip() for line in lines if line.strip()]


@pytest.mark.slow  # three commands as a user types them (`slowed check` imports Axolotl): ~20 s
def test_the_tiny_recipe_commands_run_as_written_from_an_empty_folder(tmp_path):
    import os
    import subprocess
    import sys

    header = (RECIPES / "tiny-cpu.yaml").read_text(encoding="utf-8").split("\n\n", 1)[0]
    commands = _commands([line[1:] for line in header.splitlines() if line.startswith("#   ")])
    block = README.read_text(encoding="utf-8").split("## Tiny CPU recipe", 1)[1].split("```")[1]
    assert _commands(block.splitlines()) == commands  # recipes/README.md gives the same commands
    *setup, train = commands
    # The training line is the one the end-to-end tests run (axolotl_helpers.Run: `train CONFIG --launcher python`
    # with AXOLOTL_DO_NOT_TRACK=1 and HF_HUB_OFFLINE=1 among offline_env's variables).
    assert train == "AXOLOTL_DO_NOT_TRACK=1 HF_HUB_OFFLINE=1 axolotl train tiny-cpu.yaml --launcher python"
    assert f"\n{train}\n" in DOCS.read_text(encoding="utf-8")  # docs/axolotl.md's CPU command is the same line
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(
        " && ".join(setup), shell=True, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "result   OK: SLowED will be active" in done.stdout, done.stdout
    assert (tmp_path / "slowed-tiny" / "llama" / "config.json").exists()
