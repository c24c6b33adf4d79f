"""Every bad input in one table: refused before any model is loaded, in one line naming the key, the value
and what is allowed.

Three front ends read a `slowed:` value: Python (`SLowEDConfig`, `SLowEDCallback`), Axolotl's config
validation, and `slowed check`. Every bad value goes through each of them. Settings of the trainer that
SLowED cannot honour are refused from the arguments alone (`check_training_args`, TRL) or at Axolotl's
config validation. A guard makes every model load in this module fail, so "before model load" is checked,
not assumed.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import yaml
from axolotl_helpers import BASE_CONFIG, CCE, KD, LIGER, PLUGIN, axolotl_rejection, validate_axolotl

from slowed_plugin import SLowEDCallback, SLowEDConfig, SLowEDConfigError, check_training_args

# (slowed value, fragments the message must contain: the key, the value as given, what is allowed), worded for
# YAML (`slowed.tau`, `tau: null`). The Python front ends name the keyword instead (`tau`): the fragments with
# `slowed.` dropped, or the third entry where the fix itself is spelled differently (`tau=None`).
BAD_VALUES = {
    "tau negative": (
        {"tau": -1, "mask_ratio": 0.2},
        ["`slowed.tau`", "got -1", "finite number > 0", "or null to turn"],
        ["`tau`", "got -1", "finite number > 0", "or None to turn"],
    ),
    "tau zero": ({"tau": 0, "mask_ratio": 0.2}, ["`slowed.tau`", "got 0.", "finite number > 0"]),
    "tau nan": ({"tau": math.nan, "mask_ratio": 0.2}, ["`slowed.tau`", "got nan", "finite number > 0"]),
    "tau inf": ({"tau": math.inf, "mask_ratio": 0.2}, ["`slowed.tau`", "got inf", "finite number > 0"]),
    "tau quoted zero": ({"tau": "0", "mask_ratio": 0.2}, ["`slowed.tau`", "got '0'", "finite number > 0"]),
    "tau quoted with spaces": ({"tau": " 10", "mask_ratio": 0.2}, ["`slowed.tau`", "got ' 10'", "finite number > 0"]),
    "tau bool": ({"tau": True, "mask_ratio": 0.2}, ["`slowed.tau`", "got True", "finite number > 0"]),
    "tau list": ({"tau": [10], "mask_ratio": 0.2}, ["`slowed.tau`", "got [10]", "finite number > 0"]),
    "ratio one": ({"tau": 1, "mask_ratio": 1.0}, ["`slowed.mask_ratio`", "got 1.0", "0 <= mask_ratio < 1"]),
    "ratio negative": ({"tau": 1, "mask_ratio": -0.1}, ["`slowed.mask_ratio`", "got -0.1", "0 <= mask_ratio < 1"]),
    "ratio nan": ({"tau": 1, "mask_ratio": math.nan}, ["`slowed.mask_ratio`", "got nan", "0 <= mask_ratio < 1"]),
    "ratio inf": ({"tau": 1, "mask_ratio": math.inf}, ["`slowed.mask_ratio`", "got inf", "0 <= mask_ratio < 1"]),
    "ratio null": ({"tau": 1, "mask_ratio": None}, ["`slowed.mask_ratio`", "got None", "0 turns masking off"]),
    "ratio percent": ([10, 20], ["`slowed.mask_ratio`", "got 20", "0 <= mask_ratio < 1"]),
    "mask scope": (
        {"tau": 1, "mask_ratio": 0.2, "mask_scope": "token"},
        ["`slowed.mask_scope`", "got 'token'", "one of batch, sequence"],
    ),
    "tau scope": ({"tau": 1, "mask_ratio": 0.2, "tau_scope": "model"}, ["`slowed.tau_scope`", "layer, global"]),
    "project every zero": (
        {"tau": 1, "mask_ratio": 0.2, "project_every": 0},
        ["`slowed.project_every`", "got 0", "`epoch` or a positive number"],
    ),
    "project every word": ({"tau": 1, "mask_ratio": 0.2, "project_every": "step"}, ["got 'step'", "`epoch`"]),
    "project every float": ({"tau": 1, "mask_ratio": 0.2, "project_every": 2.5}, ["project_every", "got 2.5"]),
    "reference device": (
        {"tau": 1, "mask_ratio": 0.2, "reference_device": "gpu"},
        ["`slowed.reference_device`", "got 'gpu'", "one of cpu, model"],
    ),
    "entropy source": (
        {"tau": 1, "mask_ratio": 0.2, "entropy_source": "teacher"},
        ["`slowed.entropy_source`", "got 'teacher'", "one of online, reference"],
    ),
    "reference source with batch scope": (
        {"tau": 1, "mask_ratio": 0.2, "entropy_source": "reference", "mask_scope": "batch"},
        ["`slowed.entropy_source: reference`", "got `mask_scope: batch`", "needs `mask_scope: sequence`"],
        ["`entropy_source='reference'`", "got `mask_scope='batch'`", "needs `mask_scope='sequence'`"],
    ),
    "unknown key": (
        {"tau": 1, "mask_ratio": 0.2, "mask_ration": 0.1},
        ["`slowed.mask_ration` is not a SLowED key", "mask_ratio"],
    ),
    "anchor not a mapping": (
        {"tau": None, "mask_ratio": 0, "safety_anchor": "prompts.txt"},
        ["`slowed.safety_anchor`", "got 'prompts.txt'", "must be a mapping such as {prompts:"],
        ["`safety_anchor`", "got 'prompts.txt'", "must be a mapping such as {'prompts':"],
    ),
    "anchor without prompts": (
        {"tau": None, "mask_ratio": 0, "safety_anchor": {"ratio": 0.05}},
        ["`slowed.safety_anchor.prompts` is required", "harmful requests", "`safety_anchor: {prompts:"],
        ["`safety_anchor.prompts` is required", "harmful requests", "`safety_anchor={'prompts':"],
    ),
    "anchor mode": (
        {"tau": None, "mask_ratio": 0, "safety_anchor": {"prompts": ["p"], "mode": "mixed"}},
        ["`slowed.safety_anchor.mode`", "got 'mixed'", "one of replay, gradient"],
    ),
    "anchor ratio one": (
        {"tau": None, "mask_ratio": 0, "safety_anchor": {"prompts": ["p"], "ratio": 1}},
        ["`slowed.safety_anchor.ratio`", "got 1", "0 < ratio < 1"],
    ),
    "anchor ratio percent": (
        {"tau": 1, "mask_ratio": 0.2, "safety_anchor": {"prompts": ["p"], "ratio": 5}},
        ["`slowed.safety_anchor.ratio`", "got 5", "0 < ratio < 1"],
    ),
    "anchor unknown key": (
        {"tau": None, "mask_ratio": 0, "safety_anchor": {"prompts": ["p"], "rate": 0.1}},
        ["`slowed.safety_anchor.rate` is not a safety anchor key", "got 0.1", "allowed keys: prompts"],
    ),
    "anchor empty prompts": (
        {"tau": None, "mask_ratio": 0, "safety_anchor": {"prompts": []}},
        ["`slowed.safety_anchor.prompts`", "got []", "non-empty list of strings"],
    ),
    "anchor batch size": (
        {"tau": None, "mask_ratio": 0, "safety_anchor": {"prompts": ["p"], "replay_batch_size": 0}},
        ["`slowed.safety_anchor.replay_batch_size`", "got 0", "positive integer"],
    ),
    "anchor cache": (
        {"tau": None, "mask_ratio": 0, "safety_anchor": {"prompts": ["p"], "cache": "yes"}},
        ["`slowed.safety_anchor.cache`", "got 'yes'", "true or false"],
        ["`safety_anchor.cache`", "got 'yes'", "True or False"],
    ),
    "tau missing": (
        {"mask_ratio": 0.2},
        ["`slowed.tau` is required", "`slowed: {tau: 10.0, mask_ratio: 0.2}`", "tau: null"],
        ["`tau` is required", "`tau=10.0, mask_ratio=0.2`", "`tau=None`"],
    ),
    "ratio missing": (
        {"tau": 1.0},
        ["`slowed.mask_ratio` is required", "mask_ratio: 0"],
        ["`mask_ratio` is required", "`mask_ratio=0`"],
    ),
    "short form of one": (
        [10],
        ["`slowed` short form", "[tau, mask_ratio]", "got 1"],
        ["`config` short form", "[tau, mask_ratio]", "got 1"],
    ),
    "short form of three": (
        [10, 0.2, "batch"],
        ["`slowed` short form", "with 2 values, got 3"],
        ["`config` short form", "with 2 values, got 3"],
    ),
    "string": (
        "10, 0.2",
        ["`slowed` must be a mapping", "[tau, mask_ratio]", "got '10, 0.2'"],
        ["`config` must be a SLowEDConfig, a mapping", "{'tau': 10.0", "got '10, 0.2'"],
    ),
    "number": (10, ["`slowed` must be a mapping", "got 10"], ["`config` must be a SLowEDConfig", "got 10"]),
    "monitor not a mapping": (
        {"tau": 1, "mask_ratio": 0.2, "safety_monitor": "advbench"},
        ["`slowed.safety_monitor` must be a mapping", "got 'advbench'", "{prompts: walledai/AdvBench"],
        ["`safety_monitor` must be a mapping", "got 'advbench'", "{'prompts': 'walledai/AdvBench'"],
    ),
    "monitor without prompts": (
        {"tau": 1, "mask_ratio": 0.2, "safety_monitor": {"limit": 3}},
        ["`slowed.safety_monitor.prompts` is required", "a local file"],
    ),
    "monitor every zero": (
        {"tau": 1, "mask_ratio": 0.2, "safety_monitor": {"prompts": ["p"], "every": 0}},
        ["`slowed.safety_monitor.every`", "got 0", "`epoch` or a positive number"],
    ),
    # Numbers as users write them are accepted (below); what is not a number, or out of range, still is not.
    "tau huge integer": (
        {"tau": 10**400, "mask_ratio": 0.2},
        ["`slowed.tau`", "got an integer of about 401 digits", "finite number > 0"],
    ),
    "tau overflowing exponent": ({"tau": "1e400", "mask_ratio": 0.2}, ["`slowed.tau`", "got '1e400'", "finite number"]),
    "tau word": ({"tau": "ten", "mask_ratio": 0.2}, ["`slowed.tau`", "got 'ten'", "finite number > 0"]),
    "tau negative exponent form": ({"tau": "-5e-2", "mask_ratio": 0.2}, ["`slowed.tau`", "got '-5e-2'", "> 0"]),
    "tau numpy nan": ({"tau": np.float32("nan"), "mask_ratio": 0.2}, ["`slowed.tau`", "nan", "finite number > 0"]),
    "tau numpy bool": ({"tau": np.True_, "mask_ratio": 0.2}, ["`slowed.tau`", "True", "finite number > 0"]),
    "tau tensor bool": ({"tau": torch.tensor(True), "mask_ratio": 0.2}, ["`slowed.tau`", "True", "finite number"]),
    "tau tensor of two": ({"tau": torch.tensor([1.0, 2.0]), "mask_ratio": 0.2}, ["`slowed.tau`", "finite number"]),
    "ratio exponent form of one": ({"tau": 1, "mask_ratio": "1e0"}, ["`slowed.mask_ratio`", "got '1e0'", "< 1"]),
    "ratio numpy inf": ({"tau": 1, "mask_ratio": np.float64("inf")}, ["`slowed.mask_ratio`", "inf", "< 1"]),
    "ratio huge integer": ({"tau": 1, "mask_ratio": 10**400}, ["`slowed.mask_ratio`", "about 401 digits", "< 1"]),
    "project every exponent fraction": (
        {"tau": 1, "mask_ratio": 0.2, "project_every": "2.5e0"},
        ["`slowed.project_every`", "got '2.5e0'", "positive number of optimizer steps"],
    ),
    "project every quoted fraction": (
        {"tau": 1, "mask_ratio": 0.2, "project_every": "2.0"},
        ["`slowed.project_every`", "got '2.0'", "positive number of optimizer steps"],
    ),
    "project every numpy float": (
        {"tau": 1, "mask_ratio": 0.2, "project_every": np.float32(2.0)},
        ["`slowed.project_every`", "2.0", "positive number of optimizer steps"],
    ),
    "monitor limit bool": (
        {"tau": 1, "mask_ratio": 0.2, "safety_monitor": {"prompts": ["p"], "limit": True}},
        ["`slowed.safety_monitor.limit`", "got True", "positive integer"],
    ),
    "monitor ratio huge integer": (
        {"tau": 1, "mask_ratio": 0.2, "safety_monitor": {"prompts": ["p"], "min_safety_ratio": 10**400}},
        ["`slowed.safety_monitor.min_safety_ratio`", "about 401 digits", "in [0, 1]"],
    ),
    "monitor keep_safest word": (
        {"tau": 1, "mask_ratio": 0.2, "safety_monitor": {"prompts": ["p"], "keep_safest": "yes"}},
        ["`slowed.safety_monitor.keep_safest`", "must be true or false", "got 'yes'"],
        ["`safety_monitor.keep_safest`", "must be True or False", "got 'yes'"],
    ),
}


def _python_fragments(case: str) -> list[str]:
    value, fragments, *python = BAD_VALUES[case]
    return python[0] if python else [f.replace("`slowed.", "`") for f in fragments]


def _yaml_writable(value) -> bool:
    try:
        yaml.safe_dump(value)
    except yaml.YAMLError:
        return False
    return True


# Duplicated keys, which PyYAML would silently resolve to the last value: (recipe text after the base keys,
# fragments). Only the YAML front ends can see them (a Python dict literal drops them before SLowED runs).
DUPLICATE_KEYS = {
    "key written twice": (
        "slowed:\n  tau: 0.05\n  mask_ratio: 0.2\n  tau: 10\n",
        ["`slowed.tau` is written 2 times", "write it once"],
    ),
    "monitor key written twice": (
        "slowed:\n  tau: 1\n  mask_ratio: 0.2\n  safety_monitor:\n    prompts: [p]\n    limit: 2\n    limit: 3\n",
        ["`slowed.safety_monitor.limit` is written 2 times", "write it once"],
    ),
    "slowed written twice": (
        "slowed: [10, 0.2]\nslowed: {tau: null, mask_ratio: 0}\n",
        ["`slowed:` is written 2 times at the top level", "write it once"],
    ),
}

# Numbers as users write them: YAML's scientific notation (a string to PyYAML), numpy scalars, torch 0-d tensors,
# ints. (slowed value, expected settings); the YAML-writable ones go through every front end.
ACCEPTED_NUMBERS = {
    "yaml exponent forms": ({"tau": "5e-2", "mask_ratio": "2e-1"}, {"tau": 0.05, "mask_ratio": 0.2}),
    "yaml exponent short form": (["1e1", "2.5E-1"], {"tau": 10.0, "mask_ratio": 0.25}),
    # One rule for quoted numbers: the same number as unquoted (`tau: "10"` is `tau: 10`).
    "quoted numbers": (
        {"tau": "10", "mask_ratio": "0.2", "project_every": "3"},
        {"tau": 10.0, "mask_ratio": 0.2, "project_every": 3},
    ),
    "quoted short form": (["1.5", "0"], {"tau": 1.5, "mask_ratio": 0.0}),
    "yaml exponent steps": ({"tau": 1, "mask_ratio": 0, "project_every": "1e1"}, {"project_every": 10}),
    "ints": ({"tau": 10, "mask_ratio": 0, "project_every": 3}, {"tau": 10.0, "mask_ratio": 0.0, "project_every": 3}),
    "numpy float32": ({"tau": np.float32(10.0), "mask_ratio": np.float32(0.29)}, {"tau": 10.0, "mask_ratio": 0.29}),
    "numpy int64": ({"tau": np.int64(10), "mask_ratio": 0.2, "project_every": np.int64(5)}, {"project_every": 5}),
    "torch 0-d": ({"tau": torch.tensor(0.2), "mask_ratio": torch.tensor(0.2)}, {"tau": 0.2, "mask_ratio": 0.2}),
    "monitor numbers": (
        {
            "tau": 1,
            "mask_ratio": 0.2,
            "safety_monitor": {"prompts": ["p"], "limit": np.int64(3), "min_safety_ratio": "5e-1", "every": "2e0"},
        },
        {"safety_monitor": {"prompts": ["p"], "limit": 3, "min_safety_ratio": 0.5, "every": 2}},
    ),
}


def _settings(config) -> dict:
    return {k: (dict(v) if isinstance(v, dict) or hasattr(v, "items") else v) for k, v in vars(config).items()}


# (slowed value, SFTConfig keywords, fragments): trainer settings under which SLowED would not run as set.
TRL_CONFLICTS = {
    "dft loss": ([10, 0.2], {"loss_type": "dft"}, ["`loss_type='dft'`", "`loss_type='nll'`", "`mask_ratio=0`"]),
    "unknown loss type": (
        [10, 0.2],
        {"loss_type": "focal"},
        ["`loss_type='focal'`", "`loss_type='nll'`", "`mask_ratio=0`"],
    ),
    "liger": ([10, 0.2], {"use_liger_kernel": True}, ["`use_liger_kernel=True`", "=False", "`mask_ratio=0`"]),
    "label smoothing": (
        [10, 0.2],
        {"label_smoothing_factor": 0.1},
        ["`label_smoothing_factor=0.1`", "Set it to 0", "`mask_ratio=0`"],
    ),
    "fsdp1": (
        [10, 0.2],
        {"fsdp": "full_shard", "fsdp_config": {"version": 1}},
        ["fsdp_version=1", "FSDP2 only", "`fsdp_config={'version': 2}`", "`tau=None`"],
    ),
    # The rule reads the same field SFTConfig(deepspeed=...) fills (set after construction: no engine starts).
    "deepspeed stage 0": (
        [10, 0],
        {"deepspeed": {"zero_optimization": {"stage": 0}}},
        ["zero_optimization.stage=0", "stages 1, 2 and 3", "to 1, 2 or 3", "`tau=None`"],
    ),
    "deepspeed optimizer offload": (
        [10, 0],
        {"deepspeed": {"zero_optimization": {"stage": 3, "offload_optimizer": {"device": "cpu"}}}},
        ["offload_optimizer.device='cpu'", "Remove `offload_optimizer`", "`tau=None`"],
    ),
    "anchor gradient under deepspeed": (
        {"tau": None, "mask_ratio": 0, "safety_anchor": {"prompts": ["p"], "mode": "gradient"}},
        {"deepspeed": {"zero_optimization": {"stage": 2}}},
        ["`safety_anchor.mode`", "DeepSpeed", "`'mode': 'replay'`"],
    ),
}

TRL_ACCEPTED = {
    "dft without masking": ([10, 0], {"loss_type": "dft"}),
    "liger with the reference mask": ({"tau": 10, "mask_ratio": 0.2, "entropy_source": "reference"}, {}),
    "fsdp2": ([10, 0.2], {"fsdp": "full_shard", "fsdp_config": {"version": 2}}),
    "deepspeed without slow tuning": ([None, 0.2], {"deepspeed": "ds_zero2.json"}),
    "deepspeed zero2": ([10, 0.2], {"deepspeed": {"zero_optimization": {"stage": 2}}}),
    "deepspeed zero3": ([10, 0.2], {"deepspeed": {"zero_optimization": {"stage": 3}}}),
    "label smoothing without masking": ([10, 0], {"label_smoothing_factor": 0.1}),
    "unknown loss type without masking": ([10, 0], {"loss_type": "focal"}),
}

# (Axolotl keys, fragments): settings SLowED refuses at Axolotl's config validation.
AXOLOTL_CONFLICTS = {
    "dora": ({"peft_use_dora": True}, ["DoRA", "peft_use_dora: false", "slowed.tau: null"]),
    "llama-adapter": ({"adapter": "llama-adapter"}, ["`adapter: llama-adapter`", "slowed.tau: null"]),
    "pissa": ({"peft_init_lora_weights": "pissa"}, ["ΔW = 0", "`peft_init_lora_weights: pissa`"]),
    "loftq": ({"peft": {"loftq_config": {"loftq_bits": 4}}}, ["LoftQ", "peft.loftq_config"]),
    "loaded adapter": ({"lora_model_dir": "./old-adapter"}, ["lora_model_dir", "merge-lora"]),
    "relora": ({"relora": True, "jagged_restart_steps": 100}, ["ReLoRA", "relora: false"]),
    "deepspeed stage 0": (
        {"deepspeed": {"zero_optimization": {"stage": 0}}},
        ["ZeRO stages 1, 2 and 3", "zero_optimization.stage=0", "slowed.tau: null"],
    ),
    "deepspeed optimizer offload": (
        {"deepspeed": {"zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu"}}}},
        ["optimizer offload", "offload_optimizer.device='cpu'", "Remove `offload_optimizer`", "slowed.tau: null"],
    ),
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
    "tensor parallel": ({"tensor_parallel_size": 2}, ["tensor_parallel_size: 2", "slowed.tau: null"]),
    "orpo": ({"orpo_alpha": 0.1}, ["orpo_alpha: 0.1", "slowed.mask_ratio: 0"]),
    "anchor gradient under deepspeed": (
        {
            "slowed": {"tau": None, "mask_ratio": 0, "safety_anchor": {"prompts": ["p"], "mode": "gradient"}},
            "deepspeed": {"zero_optimization": {"stage": 2}},
        },
        ["`slowed.safety_anchor.mode`", "`deepspeed`", "`mode: replay`"],
    ),
}


@pytest.fixture(autouse=True)
def no_model_load(monkeypatch):
    """Any attempt to load a model (or its config) in this module fails the test."""
    import transformers

    def refuse(*args, **kwargs):
        raise AssertionError("a bad input must be refused before any model is loaded")

    for cls in (transformers.AutoModelForCausalLM, transformers.AutoConfig, transformers.PreTrainedModel):
        monkeypatch.setattr(cls, "from_pretrained", refuse)


def _one_clear_line(message: str, fragments: list[str]) -> None:
    assert "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, (fragment, message)


def _sft_config(tmp_path, **kwargs):
    from trl import SFTConfig

    deepspeed = kwargs.pop("deepspeed", None)
    args = SFTConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, report_to=[], **kwargs)
    args.deepspeed = deepspeed
    return args


# A recipe Axolotl accepts, less its `slowed:` key.
BASE_RECIPE = {k: v for k, v in BASE_CONFIG.items() if k != "slowed"}


# Words of the other front end: a TRL user is never told a YAML fix, an Axolotl user never a Python keyword.
_YAML_WORDS = (": null", ": 0`", "slowed.", "mode: replay")
_PYTHON_WORDS = ("=None", "=0`", "'mode': 'replay'")


def _fired(finder, *args) -> bool:
    return finder is not None and finder(*args) is not None


def test_every_rule_has_a_refused_case_in_each_front_end_it_speaks_to(tmp_path):
    """Each rule's message is tested in each front end that has the setting (a new rule without a case fails)."""
    from slowed_plugin.rules import RULES

    trl_args = [_sft_config(tmp_path, **dict(kwargs)) for _, kwargs, _ in TRL_CONFLICTS.values()]
    axolotl_cfgs = [{**BASE_RECIPE, **overrides} for overrides, _ in AXOLOTL_CONFLICTS.values()]
    for rule in RULES:
        if rule.trl_args is not None:
            assert any(_fired(rule.trl_args, args) for args in trl_args), f"no TRL case for rule {rule.name!r}"
        if rule.axolotl is not None:
            assert any(_fired(rule.axolotl, cfg) for cfg in axolotl_cfgs), f"no Axolotl case for rule {rule.name!r}"


@pytest.mark.parametrize("case", sorted(BAD_VALUES))
def test_bad_value_in_python(case):
    """Python front ends name the keyword (`tau`) and spell a fix in Python (`tau=None`)."""
    value = BAD_VALUES[case][0]
    with pytest.raises(SLowEDConfigError) as from_config:
        SLowEDConfig.from_value(value)
    _one_clear_line(str(from_config.value), _python_fragments(case))
    with pytest.raises(SLowEDConfigError) as from_callback:
        SLowEDCallback(value)
    assert str(from_callback.value) == str(from_config.value)
    if isinstance(value, dict):  # the same settings as keywords
        with pytest.raises(SLowEDConfigError) as from_keywords:
            SLowEDCallback(**value)
        assert str(from_keywords.value) == str(from_config.value)


@pytest.mark.parametrize("case", sorted(BAD_VALUES))
def test_bad_value_in_axolotl_config_validation(case):
    value, fragments, *_ = BAD_VALUES[case]
    _one_clear_line(axolotl_rejection({"slowed": value}), fragments)


@pytest.mark.parametrize("case", sorted(c for c in BAD_VALUES if _yaml_writable(BAD_VALUES[c][0])))
def test_bad_value_in_slowed_check(case, tmp_path):
    """`slowed check` (and `axolotl slowed-check`) reads a recipe file: the same one error."""
    from slowed_plugin.axolotl.check import check_recipe

    value, fragments, *_ = BAD_VALUES[case]
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({"base_model": "x", "plugins": [PLUGIN], "slowed": value}), encoding="utf-8")
    report = check_recipe(str(path))
    assert len(report.errors) == 1, report.errors
    _one_clear_line(report.errors[0], fragments)


def test_keyword_messages_name_the_keyword_not_the_yaml_key():
    """Issue 14: `SLowEDCallback(mask_ratio=1.0)` said "`slowed.mask_ratio`" and suggested YAML to a Python user."""
    with pytest.raises(SLowEDConfigError) as err:
        SLowEDCallback(tau=1, mask_ratio=1.0)
    assert str(err.value).startswith("`mask_ratio` must be a number"), err.value
    with pytest.raises(SLowEDConfigError) as err:
        SLowEDCallback(mask_ratio=0.2)
    assert "`tau=None`" in str(err.value) and "slowed" not in str(err.value), err.value


def _duplicate_recipe(tmp_path, text: str):
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(BASE_RECIPE) + text, encoding="utf-8")
    return path


@pytest.mark.parametrize("case", sorted(DUPLICATE_KEYS))
def test_duplicate_keys_in_slowed_check(case, tmp_path):
    from slowed_plugin.axolotl.check import check_recipe

    text, fragments = DUPLICATE_KEYS[case]
    report = check_recipe(str(_duplicate_recipe(tmp_path, text)))
    assert len(report.errors) == 1, report.errors
    _one_clear_line(report.errors[0], fragments)


@pytest.mark.parametrize("case", sorted(DUPLICATE_KEYS))
def test_duplicate_keys_in_axolotl_config_validation(case, tmp_path):
    """`axolotl train` loads the YAML itself; its validation knows the file (`axolotl_config_path`) and reads it."""
    text, fragments = DUPLICATE_KEYS[case]
    path = _duplicate_recipe(tmp_path, text)
    overrides = {**yaml.safe_load(path.read_text()), "axolotl_config_path": str(path)}
    _one_clear_line(axolotl_rejection(overrides), fragments)


@pytest.mark.parametrize("case", sorted(ACCEPTED_NUMBERS))
def test_numbers_as_users_write_them_in_python(case):
    value, expected = ACCEPTED_NUMBERS[case]
    config = SLowEDConfig.from_value(value)
    got = _settings(config)
    assert {k: got[k] for k in expected} == expected
    assert all(type(got[k]) in (int, float, dict) for k in expected)
    assert SLowEDCallback(value).config == config
    if isinstance(value, dict):
        assert SLowEDConfig(**value) == config == SLowEDCallback(**value).config


@pytest.mark.parametrize("case", sorted(ACCEPTED_NUMBERS))
def test_numbers_as_users_write_them_in_axolotl_config_validation(case):
    value, expected = ACCEPTED_NUMBERS[case]
    validated = validate_axolotl({"slowed": value})["slowed"]
    assert {k: (dict(validated[k]) if k == "safety_monitor" else validated[k]) for k in expected} == expected


@pytest.mark.parametrize("case", sorted(c for c in ACCEPTED_NUMBERS if _yaml_writable(ACCEPTED_NUMBERS[c][0])))
def test_numbers_as_users_write_them_in_slowed_check(case, tmp_path):
    from slowed_plugin.axolotl.check import check_recipe

    value, expected = ACCEPTED_NUMBERS[case]
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({**BASE_RECIPE, "slowed": value}), encoding="utf-8")
    report = check_recipe(str(path))
    assert report.errors == [], report.errors
    assert {k: _settings(report.config)[k] for k in expected} == expected


def test_yaml_scientific_notation_as_written_in_a_recipe(tmp_path):
    """`tau: 5e-2` as a user types it (PyYAML reads it as the string '5e-2'), on both YAML front ends."""
    from slowed_plugin.axolotl.check import check_recipe

    text = yaml.safe_dump(BASE_RECIPE) + "slowed: {tau: 5e-2, mask_ratio: 2e-1, project_every: 1e1}\n"
    assert yaml.safe_load(text)["slowed"]["tau"] == "5e-2"
    path = tmp_path / "recipe.yaml"
    path.write_text(text, encoding="utf-8")
    report = check_recipe(str(path))
    assert report.errors == [], report.errors
    assert (report.config.tau, report.config.mask_ratio, report.config.project_every) == (0.05, 0.2, 10)
    validated = validate_axolotl({"slowed": yaml.safe_load(text)["slowed"]})["slowed"]
    assert (validated["tau"], validated["mask_ratio"], validated["project_every"]) == (0.05, 0.2, 10)


def test_quoted_numbers_as_written_in_a_recipe_read_as_unquoted(tmp_path):
    """Issue 22: `tau: "5e-2"` was accepted but `tau: "10"` refused; one rule now: quoted is as unquoted."""
    from slowed_plugin.axolotl.check import check_recipe

    text = yaml.safe_dump(BASE_RECIPE) + 'slowed: {tau: "10", mask_ratio: "0.2", project_every: "3"}\n'
    assert yaml.safe_load(text)["slowed"]["tau"] == "10"
    path = tmp_path / "recipe.yaml"
    path.write_text(text, encoding="utf-8")
    report = check_recipe(str(path))
    assert report.errors == [], report.errors
    assert (report.config.tau, report.config.mask_ratio, report.config.project_every) == (10.0, 0.2, 3)
    validated = validate_axolotl({"slowed": yaml.safe_load(text)["slowed"]})["slowed"]
    assert (validated["tau"], validated["mask_ratio"], validated["project_every"]) == (10.0, 0.2, 3)


def test_slowed_check_reports_every_recipe_when_one_fails_unexpectedly(tmp_path, monkeypatch):
    """Issue 14: an unexpected exception in one recipe (a huge integer used to raise OverflowError) stopped
    `slowed check`; now it becomes that recipe's error line and the others are still checked."""
    import io

    from slowed_plugin.axolotl import check

    huge, good, broken = tmp_path / "huge.yaml", tmp_path / "good.yaml", tmp_path / "broken.yaml"
    huge.write_text(yaml.safe_dump({**BASE_RECIPE, "slowed": {"tau": 10**400, "mask_ratio": 0.2}}), encoding="utf-8")
    good.write_text(yaml.safe_dump({**BASE_RECIPE, "slowed": [10, 0.2]}), encoding="utf-8")
    broken.write_text(yaml.safe_dump({**BASE_RECIPE, "slowed": [10, 0.2]}), encoding="utf-8")
    original = check.check_recipe

    def flaky(path):
        if path == str(broken):
            raise RuntimeError("simulated\nsurprise")
        return original(path)

    monkeypatch.setattr(check, "check_recipe", flaky)
    out = io.StringIO()
    status = check.check_recipes([str(huge), str(broken), str(good)], out)
    text = out.getvalue()
    assert status != 0
    assert "`slowed.tau` must be a finite number > 0" in text and "about 401 digits" in text
    assert "checking this recipe failed unexpectedly: RuntimeError: simulated surprise" in text
    assert text.count("result") == 3 and "OK: SLowED will be active" in text


@pytest.mark.parametrize("case", sorted(TRL_CONFLICTS))
def test_trainer_settings_refused_from_the_arguments_alone(case, tmp_path):
    value, kwargs, fragments = TRL_CONFLICTS[case]
    with pytest.raises(SLowEDConfigError) as err:
        check_training_args(value, _sft_config(tmp_path, **kwargs))
    _one_clear_line(str(err.value), fragments)
    assert not [w for w in _YAML_WORDS if w in str(err.value)], str(err.value)


@pytest.mark.parametrize("case", sorted(TRL_ACCEPTED))
def test_trainer_settings_slowed_honours_pass(case, tmp_path):
    value, kwargs = TRL_ACCEPTED[case]
    check_training_args(value, _sft_config(tmp_path, **kwargs))


@pytest.mark.parametrize("case", sorted(AXOLOTL_CONFLICTS))
def test_axolotl_settings_refused_at_config_validation(case):
    overrides, fragments = AXOLOTL_CONFLICTS[case]
    message = axolotl_rejection(overrides)
    _one_clear_line(message, fragments)
    assert not [w for w in _PYTHON_WORDS if w in message], message


def test_a_good_axolotl_config_passes_the_guard():
    # The guard above does not itself reject: a valid config validates with it in place.
    assert validate_axolotl()["slowed"]["tau"] == 10.0
