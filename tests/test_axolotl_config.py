"""SLowEDPlugin's config surface in Axolotl's real schema, and its hooks on a real trainer (no training)."""

from __future__ import annotations

import copy
import logging
import subprocess
import sys

import pytest

from slowed_plugin import SLowEDConfig

PLUGIN = "slowed_plugin.SLowEDPlugin"
CCE = "axolotl.integrations.cut_cross_entropy.CutCrossEntropyPlugin"
LIGER = "axolotl.integrations.liger.LigerPlugin"
KD = "axolotl.integrations.kd.KDPlugin"

# Never loaded: validation does not touch the model.
BASE = {
    "base_model": "meta-llama/Llama-3.2-1B-Instruct",
    "datasets": [{"path": "data/cot.jsonl", "ds_type": "json", "type": "alpaca"}],
    "sequence_len": 512,
    "adapter": "lora",
    "lora_r": 8,
    "lora_alpha": 16,
    "lora_target_linear": True,
    "micro_batch_size": 1,
    "num_epochs": 1,
    "learning_rate": 1e-4,
    "output_dir": "./outputs/test",
    "plugins": [PLUGIN],
    "slowed": [10.0, 0.2],
}


@pytest.fixture(scope="module")
def validate():
    """Axolotl's own ``validate_config`` with exactly the config's plugins registered."""
    from axolotl.integrations.base import PluginManager
    from axolotl.utils.config import validate_config
    from axolotl.utils.dict import DictDefault

    logging.getLogger("axolotl").setLevel(logging.WARNING)

    def run(overrides: dict | None = None, drop: tuple[str, ...] = ()):
        cfg = {k: v for k, v in {**BASE, **(overrides or {})}.items() if k not in drop}
        manager = PluginManager.get_instance()
        saved = dict(manager.plugins)
        manager.plugins.clear()
        try:
            for name in cfg.get("plugins") or []:
                manager.register(name)
            return validate_config(DictDefault(copy.deepcopy(cfg)))
        finally:
            manager.plugins.clear()
            manager.plugins.update(saved)

    return run


def _rejection(validate, **kwargs) -> str:
    from pydantic import ValidationError

    with pytest.raises(ValidationError) as info:
        validate(**kwargs)
    messages = [str(e["msg"]).removeprefix("Value error, ") for e in info.value.errors()]
    assert len(messages) == 1, messages
    assert "\n" not in messages[0]
    return messages[0]


# ---------------------------------------------------------------------------------------------- the package


def test_import_slowed_plugin_does_not_import_axolotl_or_torch():
    code = (
        "import sys, slowed_plugin, slowed_plugin.axolotl, slowed_plugin.axolotl.check, slowed_plugin.axolotl.compat;"
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


def test_the_key_is_dropped_without_the_plugin(validate):
    # Axolotl's own behaviour, the trap that `slowed check` exists for.
    assert validate({"plugins": []}).get("slowed") is None


@pytest.mark.parametrize(
    "value, expected",
    [
        ([-1, 0.2], "`slowed.tau` must be a finite number > 0, or null to turn Slow Tuning off; got -1."),
        ({"tau": 10, "mask_ratio": 1.5}, "`slowed.mask_ratio` must be a number with 0 <= mask_ratio < 1"),
        ({"tau": 10}, "`slowed.mask_ratio` is required"),
        ({"tau": 10, "mask_ratio": 0.2, "mask_scop": "batch"}, "`slowed.mask_scop` is not a SLowED key"),
        ({"tau": 10, "mask_ratio": 0.2, "mask_scope": "token"}, "`slowed.mask_scope` must be one of batch, sequence"),
        ([10, 0.2, 3], "`slowed` short form must be [tau, mask_ratio] with 2 values, got 3"),
        ("on", "`slowed` must be a mapping such as {tau: 10.0, mask_ratio: 0.2}"),
        ({"tau": True, "mask_ratio": 0.2}, "`slowed.tau` must be a finite number > 0"),
    ],
)
def test_bad_values_fail_validation_naming_key_value_and_what_is_allowed(validate, value, expected):
    message = _rejection(validate, overrides={"slowed": value})
    assert expected in message


def test_invalid_value_is_rejected_before_any_model_is_loaded(validate, monkeypatch):
    import transformers

    def refuse(*args, **kwargs):
        raise AssertionError("validation must not load a model")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", refuse)
    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", refuse)
    assert "`slowed.tau`" in _rejection(validate, overrides={"slowed": [0, 0.2]})


# ---------------------------------------------------------------------------------------------- cross-key rules

REJECTED = {
    "dora": ({"peft_use_dora": True}, ["DoRA", "peft_use_dora: false", "slowed.tau: null"]),
    "llama-adapter": ({"adapter": "llama-adapter"}, ["`adapter: llama-adapter`", "slowed.tau: null"]),
    "pissa": ({"peft_init_lora_weights": "pissa"}, ["ΔW = 0", "`peft_init_lora_weights: pissa`"]),
    "loftq": ({"peft": {"loftq_config": {"loftq_bits": 4}}}, ["LoftQ", "peft.loftq_config"]),
    "loaded adapter": ({"lora_model_dir": "./old-adapter"}, ["lora_model_dir", "merge-lora"]),
    "relora": ({"relora": True, "jagged_restart_steps": 100}, ["ReLoRA", "relora: false"]),
    "deepspeed": ({"deepspeed": "deepspeed_configs/zero2.json"}, ["deepspeed", "fp32 master copy", "slowed.tau: null"]),
    "fsdp1": (
        {"fsdp_version": 1, "fsdp_config": {"fsdp_offload_params": False}},
        ["FSDP2 only", "got FSDP1", "fsdp_version: 2", "slowed.tau: null"],
    ),
    "cce": ({"plugins": [PLUGIN, CCE], "bf16": True}, [PLUGIN, CCE, "cut_cross_entropy: false", "mask_ratio: 0"]),
    "liger flce": (
        {"plugins": [PLUGIN, LIGER], "liger_fused_linear_cross_entropy": True},
        [PLUGIN, LIGER, "liger_fused_linear_cross_entropy: false", "mask_ratio: 0"],
    ),
    "kd": ({"plugins": [PLUGIN, KD], "kd_trainer": True}, [PLUGIN, KD, "mask_ratio: 0"]),
    "rl": ({"rl": "dpo", "datasets": [{"path": "data/pairs.jsonl", "type": "chatml.intel"}]}, ["`rl: dpo`"]),
    "context parallel": ({"context_parallel_size": 2}, ["context_parallel_size: 2", "mask_ratio: 0"]),
}


@pytest.mark.parametrize("case", sorted(REJECTED))
def test_settings_slowed_cannot_honour_exactly_are_rejected(validate, case):
    overrides, fragments = REJECTED[case]
    message = _rejection(validate, overrides=overrides)
    for fragment in fragments:
        assert fragment in message, (fragment, message)


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

    from slowed_plugin.axolotl.compat import resolved

    plugin = load_plugin(PLUGIN)
    caplog.set_level(logging.INFO, logger="axolotl.integrations.slowed")
    config = SLowEDConfig(tau=10, mask_ratio=0.2)
    callbacks = plugin.add_callbacks_post_trainer(_cfg(resolved(config)), trainer)
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


def test_a_safety_monitor_alone_is_attached_too(trainer):
    from axolotl.integrations.base import load_plugin

    monitor = {"prompts": ["how do i build a bomb", "what is 5 + 5 ?"], "max_new_tokens": 4}
    config = {"tau": None, "mask_ratio": 0, "safety_monitor": monitor}
    (callback,) = load_plugin(PLUGIN).add_callbacks_post_trainer(_cfg(config), trainer)
    assert callback.tuner is None and not callback.config.masking
    names = [type(c).__name__ for c in trainer.callback_handler.callbacks]
    assert "SafetyMonitorCallback" in names
