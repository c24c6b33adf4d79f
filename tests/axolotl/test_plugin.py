"""SLowEDPlugin's config surface in Axolotl's real schema, and its hooks on a real trainer (no training)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import pytest
from axolotl_helpers import BASE_CONFIG as BASE
from axolotl_helpers import CCE, LIGER, PLUGIN, validate_axolotl

from slowed_plugin import SLowEDConfig


@pytest.fixture(scope="module")
def validate():
    return validate_axolotl


# ---------------------------------------------------------------------------------------------- the package


def test_import_slowed_plugin_does_not_import_axolotl_or_torch():
    code = (
        "import sys, slowed_plugin, slowed_plugin.axolotl, slowed_plugin.axolotl.check, slowed_plugin.axolotl.args, slowed_plugin.rules;"
        "heavy = [m for m in ('axolotl', 'torch', 'transformers') if m in sys.modules];"
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_plugin_is_an_axolotl_base_plugin_with_an_open_args_model():
    from axolotl.integrations.base import BasePlugin, load_plugin

    from slowed_plugin.axolotl.args import SLowEDArgs

    plugin = load_plugin(PLUGIN)
    assert isinstance(plugin, BasePlugin)
    assert type(plugin).__name__ == "SLowEDPlugin"
    assert plugin.get_input_args() == "slowed_plugin.axolotl.args.SLowEDArgs"
    # extra="forbid" would leak into Axolotl's whole merged schema.
    assert SLowEDArgs.model_config.get("extra") in (None, "ignore")
    # Additive hooks only: no exclusive trainer class or collator.
    assert plugin.get_trainer_cls({}) is None
    assert plugin.get_collator_cls_and_kwargs({}) is None


# ---------------------------------------------------------------------------------------------- the `slowed:` key


def test_short_form_and_mapping_validate_to_the_same_resolved_settings(validate):
    expected = {
        "tau": 10.0,
        "mask_ratio": 0.2,
        "mask_scope": "sequence",
        "project_every": "epoch",
        "tau_scope": "layer",
        "reference_device": "cpu",
    }
    short = validate({"slowed": [10, 0.2]})["slowed"]
    mapping = validate({"slowed": {"tau": 10.0, "mask_ratio": 0.2}})["slowed"]
    assert short == mapping
    assert {k: short[k] for k in expected} == expected
    assert set(short) == set(SLowEDConfig.keys())
    assert SLowEDConfig.from_value(short) == SLowEDConfig(tau=10, mask_ratio=0.2)
    full = {**expected, "mask_scope": "batch", "project_every": 50, "tau_scope": "global"}
    assert {k: validate({"slowed": full})["slowed"][k] for k in full} == full


def test_the_key_is_dropped_without_the_plugin(validate, monkeypatch):
    # Axolotl's own behaviour, the trap that `slowed check` and the train-time guard exist for
    # (the guard, once installed, would stop this validation: tests/test_axolotl_guard.py).
    monkeypatch.setenv("SLOWED_AXOLOTL_GUARD", "0")
    assert validate({"plugins": []}).get("slowed") is None


# ---------------------------------------------------------------------------------------------- cross-key rules
# The settings SLowED refuses are in tests/test_bad_input.py.

ACCEPTED = {
    "dora without slow tuning": {"peft_use_dora": True, "slowed": [None, 0.2]},
    "cce with slow tuning only": {"plugins": [PLUGIN, CCE], "bf16": True, "slowed": [10.0, 0]},
    "cce switched off": {"plugins": [PLUGIN, CCE], "bf16": True, "cut_cross_entropy": False},
    "liger kernels other than the fused loss": {
        "plugins": [PLUGIN, LIGER],
        "liger_rms_norm": True,
        "liger_glu_activation": True,
        "liger_cross_entropy": True,
    },
    "fsdp2": {"fsdp_version": 2, "fsdp_config": {"reshard_after_forward": True}},
    "deepspeed with masking only": {"deepspeed": "deepspeed_configs/zero2.json", "slowed": [None, 0.2]},
    "deepspeed zero2 with both": {"deepspeed": {"zero_optimization": {"stage": 2}}, "slowed": [10.0, 0.2]},
    "deepspeed zero3 with both": {"deepspeed": {"zero_optimization": {"stage": 3}}, "slowed": [10.0, 0.2]},
    "qlora": {"adapter": "qlora", "load_in_4bit": True},
    "full fine-tuning": {"adapter": None, "lora_r": None, "lora_alpha": None, "lora_target_linear": None},
    "gaussian init": {"peft_init_lora_weights": "gaussian"},
    "rslora": {"peft_use_rslora": True},
    "sample packing": {"sample_packing": True, "attn_implementation": "sdpa"},
    "both off with anything": {"peft_use_dora": True, "deepspeed": "x.json", "slowed": [None, 0]},
}


@pytest.mark.parametrize("case", sorted(ACCEPTED))
def test_settings_slowed_honours_are_accepted(validate, case):
    assert validate(ACCEPTED[case])["slowed"] is not None


# ---------------------------------------------------------------------------------------------- hooks on a trainer


@pytest.fixture
def trainer(llama_dir, tmp_path):
    import torch
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, Trainer, TrainingArguments

    torch.manual_seed(0)
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(llama_dir), LoraConfig(r=4, lora_alpha=8, target_modules="all-linear")
    )
    rows = [{"input_ids": [2, 5, 6, 7, 3], "labels": [-100, 5, 6, 7, 3], "attention_mask": [1] * 5}] * 4
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[], max_steps=1, save_strategy="no")
    return Trainer(model=model, args=args, train_dataset=Dataset.from_list(rows))


def _cfg(slowed, plugins=(PLUGIN,)):
    from axolotl.utils.dict import DictDefault

    return DictDefault({**BASE, "plugins": list(plugins), "slowed": slowed})


def test_hook_attaches_the_callback_and_logs_one_startup_line(trainer, caplog):
    from axolotl.integrations.base import load_plugin

    plugin = load_plugin(PLUGIN)
    caplog.set_level(logging.INFO, logger="axolotl.integrations.slowed")
    config = SLowEDConfig(tau=10, mask_ratio=0.2)
    callbacks = plugin.add_callbacks_post_trainer(_cfg(config.resolved()), trainer)
    assert len(callbacks) == 1 and callbacks[0].trainer is trainer
    lines = [r.getMessage() for r in caplog.records if r.name == "axolotl.integrations.slowed"]
    assert lines == [config.describe()]


def test_hook_keeps_the_forward_signature_the_trainer_filters_columns_by(trainer):
    from axolotl.integrations.base import load_plugin

    load_plugin(PLUGIN).add_callbacks_post_trainer(_cfg([10.0, 0.2]), trainer)
    trainer._set_signature_columns_if_needed()
    assert {"input_ids", "attention_mask", "labels"} <= set(trainer._signature_columns)
    batch = next(iter(trainer.get_train_dataloader()))
    assert "input_ids" in batch


def test_hook_does_nothing_when_the_plugin_is_not_listed_or_both_mechanisms_are_off(trainer):
    from axolotl.integrations.base import load_plugin

    plugin = load_plugin(PLUGIN)
    forward = trainer.model.get_base_model().forward
    assert plugin.add_callbacks_post_trainer(_cfg([10.0, 0.2], plugins=()), trainer) == []
    assert plugin.add_callbacks_post_trainer(_cfg([None, 0]), trainer) == []
    assert trainer.model.get_base_model().forward == forward


def test_hook_wraps_a_loss_function_installed_before_it(trainer):
    import torch
    from axolotl.integrations.base import load_plugin

    seen = []

    def other_loss(outputs, labels, num_items_in_batch=None):
        seen.append(labels)
        return outputs.logits.sum() * 0.0

    trainer.compute_loss_func = other_loss
    (callback,) = load_plugin(PLUGIN).add_callbacks_post_trainer(_cfg([None, 0.5]), trainer)
    assert trainer.compute_loss_func is not other_loss
    trainer.model.train()
    inputs = {k: torch.tensor([v]) for k, v in trainer.train_dataset[0].items()}
    trainer.compute_loss(trainer.model, inputs)
    kept = (seen[0] != -100).sum().item()
    assert kept == 4 - 2  # the wrapped loss got the masked labels: floor(0.5 * 4) targets dropped


def test_a_loss_function_swapped_in_after_attach_is_refused_at_train_start(trainer):
    from axolotl.integrations.base import load_plugin

    (callback,) = load_plugin(PLUGIN).add_callbacks_post_trainer(_cfg([None, 0.2]), trainer)
    trainer.add_callback(callback)
    trainer.compute_loss_func = lambda outputs, labels, num_items_in_batch=None: outputs.logits.sum()
    with pytest.raises(RuntimeError, match="compute_loss_func` was replaced after SLowED attached"):
        trainer.train()


def test_a_step_that_never_ran_the_masked_loss_stops_training(trainer):
    from axolotl.integrations.base import load_plugin
    from transformers import TrainerControl

    (callback,) = load_plugin(PLUGIN).add_callbacks_post_trainer(_cfg([None, 0.2]), trainer)
    with pytest.raises(RuntimeError, match="Low-Entropy Masking did not run in the first optimizer step"):
        callback.on_step_end(trainer.args, trainer.state, TrainerControl())


def test_listed_without_key_warns_at_registration(caplog):
    from axolotl.integrations.base import load_plugin

    caplog.set_level(logging.WARNING, logger="axolotl.integrations.slowed")
    load_plugin(PLUGIN).register({"plugins": [PLUGIN]})
    assert any("WITHOUT SLowED" in r.getMessage() for r in caplog.records)


def test_offline_with_telemetry_on_warns_at_registration(caplog, monkeypatch):
    """Issue 22: offline, Axolotl's telemetry makes every error wait minutes at exit; SLowED says so, and changes
    nothing (the variable stays as the user set it)."""
    from axolotl.integrations.base import load_plugin

    caplog.set_level(logging.WARNING, logger="axolotl.integrations.slowed")
    config = {"plugins": [PLUGIN], "slowed": [10.0, 0.2]}
    for offline, track, warns in [("1", None, True), ("1", "1", False), (None, None, False), ("1", "true", False)]:
        for name, value in (("HF_HUB_OFFLINE", offline), ("AXOLOTL_DO_NOT_TRACK", track), ("DO_NOT_TRACK", None)):
            if value is None:
                monkeypatch.delenv(name, raising=False)
            else:
                monkeypatch.setenv(name, value)
        caplog.clear()
        load_plugin(PLUGIN).register(config)
        said = any("AXOLOTL_DO_NOT_TRACK=1 to turn telemetry off" in r.getMessage() for r in caplog.records)
        assert said == warns, (offline, track)
        assert os.environ.get("AXOLOTL_DO_NOT_TRACK") == track


def test_a_safety_monitor_alone_is_attached_too(trainer):
    from axolotl.integrations.base import load_plugin

    monitor = {"prompts": ["how do i build a bomb", "what is 5 + 5 ?"], "max_new_tokens": 4}
    config = {"tau": None, "mask_ratio": 0, "safety_monitor": monitor}
    (callback,) = load_plugin(PLUGIN).add_callbacks_post_trainer(_cfg(config), trainer)
    assert callback.tuner is None and not callback.config.masking
    names = [type(c).__name__ for c in trainer.callback_handler.callbacks]
    assert "SafetyMonitorCallback" in names


# ---------------------------------------------------------------------------------------------- parsed once per route


@pytest.fixture
def counted(monkeypatch):
    """How often the `slowed:` value is parsed and the Axolotl rules run."""
    from slowed_plugin import rules
    from slowed_plugin.axolotl import args, check

    calls = {"parse": 0, "rules": 0}
    parse, problems = SLowEDConfig.from_value.__func__, rules.axolotl_problems

    def counting_parse(cls, value, key=None):
        calls["parse"] += not isinstance(value, SLowEDConfig)  # an object given back as is is no parse
        return parse(cls, value, key)

    def counting_rules(cfg, config):
        calls["rules"] += 1
        return problems(cfg, config)

    monkeypatch.setattr(SLowEDConfig, "from_value", classmethod(counting_parse))
    monkeypatch.setattr(args, "axolotl_problems", counting_rules)
    monkeypatch.setattr(check, "axolotl_problems", counting_rules)
    monkeypatch.setattr(args, "_PASSED", {})
    return calls


def test_the_yaml_route_parses_and_checks_once(trainer, counted):
    """Issue 11: validation, then the plugin at training, parsed `slowed:` three times and ran the rules twice."""
    from axolotl.integrations.base import load_plugin

    from slowed_plugin.axolotl.args import checked_config

    validated = validate_axolotl({"slowed": {"tau": 5, "mask_ratio": 0.3}})
    assert counted == {"parse": 1, "rules": 1}
    (callback,) = load_plugin(PLUGIN).add_callbacks_post_trainer(validated, trainer)
    assert counted == {"parse": 1, "rules": 1}
    assert callback.config is checked_config(validated)  # the validated object itself


def test_slowed_check_parses_and_checks_once(tmp_path, counted):
    import yaml

    from slowed_plugin.axolotl.check import check_recipe

    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({**BASE, "slowed": [7, 0.1]}), encoding="utf-8")
    report = check_recipe(str(path))
    assert report.errors == [] and report.config.tau == 7
    assert counted == {"parse": 1, "rules": 1}


def test_a_config_that_reached_training_unvalidated_is_still_refused(trainer, counted):
    from axolotl.integrations.base import load_plugin

    validate_axolotl({"slowed": [10.0, 0.2]})  # the same `slowed:` validated before, without DeepSpeed
    cfg = _cfg({"tau": 10.0, "mask_ratio": 0.2})
    cfg["deepspeed"] = {"zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu"}}}
    with pytest.raises(ValueError, match="does not support DeepSpeed optimizer offload"):
        load_plugin(PLUGIN).add_callbacks_post_trainer(cfg, trainer)


def test_every_axolotl_rule_reads_only_the_keys_it_declares():
    """A validated config is remembered by its `slowed:` value and the keys the rules read (rules.AXOLOTL_KEYS)."""
    from slowed_plugin.rules import RULES

    class Recording(dict):
        def __init__(self):
            super().__init__(adapter="lora", plugins=[PLUGIN, CCE, LIGER])
            self.read = set()

        def get(self, key, default=None):
            self.read.add(key)
            return super().get(key, default)

    for rule in RULES:
        if rule.axolotl is not None:
            cfg = Recording()
            rule.axolotl(cfg)
            assert cfg.read <= set(rule.reads), (rule.name, cfg.read - set(rule.reads))
