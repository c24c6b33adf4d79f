"""SLowED as an Axolotl plugin: ``plugins: [slowed_plugin.SLowEDPlugin]`` and a ``slowed:`` key.

- :mod:`.args`: the pydantic model merged into Axolotl's config schema (the ``slowed`` key).
- :mod:`.recipe`: reading a recipe file, with the duplicated ``slowed`` keys PyYAML would hide.
- the cross-key rules live in :mod:`slowed_plugin.rules`, shared with TRL.
- :mod:`.plugin`: ``SLowEDPlugin``, which attaches :class:`slowed_plugin.SLowEDCallback` to the trainer.
- :mod:`.check` and :mod:`.cli`: ``slowed check RECIPE.yaml`` and ``axolotl slowed-check RECIPE.yaml``.

Nothing here imports axolotl at package import time; ``plugin`` does, when Axolotl loads it.
"""

PLUGIN_NAME = "slowed_plugin.SLowEDPlugin"
