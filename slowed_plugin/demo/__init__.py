"""``slowed demo``: CoT distillation that costs safety, and what SLowED does about it, on CPU in minutes.

- :mod:`.world`: the synthetic world (base-model data, CoT distillation set, held-out prompts).
- :mod:`.base_model`: the "aligned base model", trained from scratch and cached.
- :mod:`.methods`: the method catalogue (plain LoRA, each mechanism, SLowED; sweeps), shared settings, run list.
- :mod:`.run`: one method and seed through a stock TRL ``SFTTrainer`` with ``SLowEDCallback``.
- :mod:`.metrics`: reasoning accuracy, benign helpfulness, kinds of answers and of dropped tokens.
- :mod:`.epoch_eval`: the demo's trainer callback (per-epoch reasoning, ``||ΔW||``, dropped tokens, progress).
- :mod:`.workers`, :mod:`.progress`: runs in worker processes, one thread each; the parent's progress bars.
- :mod:`.report`: table, ``report.md``, ``results.json`` and the figures.
- :mod:`.cli`: the ``slowed demo`` command.

Importing this package is light: torch, transformers and trl are imported by the pieces that need them.
"""
