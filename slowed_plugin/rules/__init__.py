"""What SLowED refuses and why: one table of rules, read by the TRL and the Axolotl front ends alike.

Each :class:`Rule` is one setting under which SLowED would not run as configured. It states, once, which
mechanism the setting breaks (``applies``: Slow Tuning, Low-Entropy Masking, online masking) and why; then,
for each front end that has the setting, how to find it and how to say so in that front end's own words
(TRL argument names such as ``use_liger_kernel=True`` and fixes such as ``mask_ratio=0``, or Axolotl YAML keys
such as ``deepspeed:`` and fixes such as ``slowed.mask_ratio: 0``):

- ``trl_args(args)``: on ``TrainingArguments`` / ``SFTConfig`` alone, so a TRL script fails before it loads a
  model (:func:`check_training_args`);
- ``trl_trainer(trainer)``: on the built trainer, for what only it knows (the model's kind, an engine enabled
  by an accelerate config file); rules without it run ``trl_args`` on ``trainer.args`` (:func:`check_trainer`);
- ``axolotl(cfg)``: on the Axolotl config alone, no model, no axolotl import (:func:`axolotl_problems`), at
  config validation, in ``slowed check``, and when the plugin meets a config that was not validated.

Every finder returns the full one-line message, naming the setting, its value and what SLowED accepts, or None.
By concern: :mod:`.rule` (what a rule is), :mod:`.table` (the rules), :mod:`.training` (model, adapter, loss,
parallel layout), :mod:`.engines` (DeepSpeed, FSDP), :mod:`.anchor` (the safety anchor),
:mod:`.front_ends` (each front end's entry point).
"""

from .anchor import anchor_dataset_type, anchor_source_problem, unsupported_anchor_dataset
from .engines import read_deepspeed_config, zero_stage
from .front_ends import axolotl_problems, check_trainer, check_training_args
from .rule import AXOLOTL, TRL, Rule, listed_plugin
from .table import AXOLOTL_KEYS, RULES, axolotl_facts

__all__ = [
    "AXOLOTL",
    "AXOLOTL_KEYS",
    "RULES",
    "TRL",
    "Rule",
    "anchor_dataset_type",
    "anchor_source_problem",
    "axolotl_facts",
    "axolotl_problems",
    "check_trainer",
    "check_training_args",
    "listed_plugin",
    "read_deepspeed_config",
    "unsupported_anchor_dataset",
    "zero_stage",
]
