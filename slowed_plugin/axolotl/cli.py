"""``axolotl slowed-check RECIPE.yaml``: the ``slowed check`` command as an Axolotl CLI command.

Registered through the ``axolotl.cli_commands`` entry point group (``pyproject.toml``), which
Axolotl 0.19 loads lazily as ``<module>:<attribute>`` naming a ``click.Command``.
"""

from __future__ import annotations

import click


@click.command(name="slowed-check")
@click.argument("recipes", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=str))
@click.pass_context
def slowed_check(ctx: click.Context, recipes: tuple[str, ...]) -> None:
    """Check that Axolotl recipes will train with SLowED on (exit 1 if not)."""
    import logging

    from .check import check_recipes

    logging.getLogger("axolotl").setLevel(logging.WARNING)
    ctx.exit(check_recipes(recipes))
