"""``slowed demo``: CoT distillation that costs safety, and what SLowED does about it, on CPU in minutes.

- :mod:`.world`: the synthetic world (base-model data, CoT distillation set, held-out prompts).
- :mod:`.base_model`: the "aligned base model", trained from scratch and cached.
- :mod:`.runs`: each method through a stock TRL ``SFTTrainer`` with ``SLowEDCallback``.
- :mod:`.report`: table, ``report.md``, ``results.json`` and the figures.
- :mod:`.cli`: the ``slowed demo`` command.

Importing this package is light: torch, transformers and trl are imported by the pieces that need them.
"""
