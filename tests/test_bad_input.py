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

import pytest
import yaml
from axolotl_helpers import CCE, KD, LIGER, PLUGIN, axolotl_rejection, validate_axolotl

from slowed_plugin import SLowEDCallback, SLowEDConfig, SLowEDConfigError, check_training_args

# (slowed value, fragments the message must contain: the key, the value as given, what is allowed)
BAD_VALUES = {
    "tau negative": ({"tau": -1, "mask_ratio": 0.2}, ["`slowed.tau`", "got -1", "finite number > 0", "null"]),
    "tau zero": ({"tau": 0, "mask_ratio": 0.2}, ["`slowed.tau`", "got 0.", "finite number > 0"]),
    "tau nan": ({"tau": math.nan, "mask_ratio": 0.2}, ["`slowed.tau`", "got nan", "finite number > 0"]),
    "tau inf": ({"tau": math.inf, "mask_ratio": 0.2}, ["`slowed.tau`", "got inf", "finite number > 0"]),
    "tau string": ({"tau": "10", "mask_ratio": 0.2}, ["`slowed.tau`", "got '10'", "finite number > 0"]),
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
    ),
    "unknown key": (
        {"tau": 1, "mask_ratio": 0.2, "mask_ration": 0.1},
        ["`slowed.mask_ration` is not a SLowED key", "mask_ratio"],
    ),
    "tau missing": ({"mask_ratio": 0.2}, ["`slowed.tau` is required", "tau: null"]),
    "ratio missing": ({"tau": 1.0}, ["`slowed.mask_ratio` is required", "mask_ratio: 0"]),
    "short form of one": ([10], ["`slowed` short form", "[tau, mask_ratio]", "got 1"]),
    "short form of three": ([10, 0.2, "batch"], ["`slowed` short form", "with 2 values, got 3"]),
    "string": ("10, 0.2", ["`slowed` must be a mapping", "[tau, mask_ratio]", "got '10, 0.2'"]),
    "number": (10, ["`slowed` must be a mapping", "got 10"]),
    "monitor not a mapping": (
        {"tau": 1, "mask_ratio": 0.2, "safety_monitor": "advbench"},
        ["`slowed.safety_monitor` must be a mapping", "got 'advbench'", "prompts"],
    ),
    "monitor without prompts": (
        {"tau": 1, "mask_ratio": 0.2, "safety_monitor": {"limit": 3}},
        ["`slowed.safety_monitor.prompts` is required", "a local file"],
    ),
    "monitor every zero": (
        {"tau": 1, "mask_ratio": 0.2, "safety_monitor": {"prompts": ["p"], "every": 0}},
        ["`slowed.safety_monitor.every`", "got 0", "`epoch` or a positive number"],
    ),
}

# (slowed value, SFTConfig keywords, fragments): trainer settings under which SLowED would not run as set.
TRL_CONFLICTS = {
    "dft loss": ([10, 0.2], {"loss_type": "dft"}, ["`loss_type='dft'`", "`loss_type='nll'`", "`mask_ratio: 0`"]),
    "liger": ([10, 0.2], {"use_liger_kernel": True}, ["`use_liger_kernel=True`", "=False", "`mask_ratio: 0`"]),
    "label smoothing": (
        [10, 0.2],
        {"label_smoothing_factor": 0.1},
        ["`label_smoothing_factor=0.1`", "Set it to 0", "`mask_ratio: 0`"],
    ),
    "fsdp1": (
        [10, 0.2],
        {"fsdp": "full_shard", "fsdp_config": {"version": 1}},
        ["fsdp_version=1", "FSDP2 only", "`fsdp_config={'version': 2}`", "`tau: null`"],
    ),
    # The rule reads the same field SFTConfig(deepspeed=...) fills (set after construction: no engine starts).
    "deepspeed stage 0": (
        [10, 0],
        {"deepspeed": {"zero_optimization": {"stage": 0}}},
        ["zero_optimization.stage=0", "stages 1, 2 and 3", "`tau: null`"],
    ),
    "deepspeed optimizer offload": (
        [10, 0],
        {"deepspeed": {"zero_optimization": {"stage": 3, "offload_optimizer": {"device": "cpu"}}}},
        ["offload_optimizer.device='cpu'", "Remove `offload_optimizer`", "`tau: null`"],
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
}

# (Axolotl keys, fragments): settings SLowED refuses at Axolotl's config validation.
AXOLOTL_CONFLICTS = {
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


def test_the_table_is_large_enough():
    assert len(BAD_VALUES) + len(TRL_CONFLICTS) + len(AXOLOTL_CONFLICTS) >= 40


@pytest.mark.parametrize("case", sorted(BAD_VALUES))
def test_bad_value_in_python(case):
    value, fragments = BAD_VALUES[case]
    with pytest.raises(SLowEDConfigError) as from_config:
        SLowEDConfig.from_value(value)
    _one_clear_line(str(from_config.value), fragments)
    with pytest.raises(SLowEDConfigError) as from_callback:
        SLowEDCallback(value)
    assert str(from_callback.value) == str(from_config.value)


@pytest.mark.parametrize("case", sorted(BAD_VALUES))
def test_bad_value_in_axolotl_config_validation(case):
    value, fragments = BAD_VALUES[case]
    _one_clear_line(axolotl_rejection({"slowed": value}), fragments)


@pytest.mark.parametrize("case", sorted(BAD_VALUES))
def test_bad_value_in_slowed_check(case, tmp_path):
    """`slowed check` (and `axolotl slowed-check`) reads a recipe file: the same one error."""
    from slowed_plugin.axolotl.check import check_recipe

    value, fragments = BAD_VALUES[case]
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({"base_model": "x", "plugins": [PLUGIN], "slowed": value}), encoding="utf-8")
    report = check_recipe(str(path))
    assert len(report.errors) == 1, report.errors
    _one_clear_line(report.errors[0], fragments)


@pytest.mark.parametrize("case", sorted(TRL_CONFLICTS))
def test_trainer_settings_refused_from_the_arguments_alone(case, tmp_path):
    value, kwargs, fragments = TRL_CONFLICTS[case]
    with pytest.raises(SLowEDConfigError) as err:
        check_training_args(value, _sft_config(tmp_path, **kwargs))
    _one_clear_line(str(err.value), fragments)


@pytest.mark.parametrize("case", sorted(TRL_ACCEPTED))
def test_trainer_settings_slowed_honours_pass(case, tmp_path):
    value, kwargs = TRL_ACCEPTED[case]
    check_training_args(value, _sft_config(tmp_path, **kwargs))


@pytest.mark.parametrize("case", sorted(AXOLOTL_CONFLICTS))
def test_axolotl_settings_refused_at_config_validation(case):
    overrides, fragments = AXOLOTL_CONFLICTS[case]
    _one_clear_line(axolotl_rejection(overrides), fragments)


def test_a_good_axolotl_config_passes_the_guard():
    # The guard above does not itself reject: a valid config validates with it in place.
    assert validate_axolotl()["slowed"]["tau"] == 10.0
