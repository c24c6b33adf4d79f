"""``slowed recipes``: the bundled Axolotl recipes, listed or copied out (like ``axolotl fetch examples``).

    slowed recipes                          # name and first header line of each recipe
    slowed recipes copy qlora-8gb [DIR]     # writes DIR/qlora-8gb.yaml (DIR defaults to .)

A wheel carries the repository's top-level ``recipes/`` folder as ``slowed_plugin/recipes``
(pyproject.toml maps it); a source checkout or an editable install reads the folder itself.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from importlib import resources
from pathlib import Path


def recipe_dir() -> Path:
    """The folder holding the recipes: inside the installed package, else the checkout's ``recipes/``."""
    packaged = resources.files("slowed_plugin").joinpath("recipes")
    if packaged.is_dir():
        return Path(str(packaged))
    checkout = Path(__file__).resolve().parent.parent / "recipes"
    if checkout.is_dir():
        return checkout
    raise FileNotFoundError("no recipes found: this installation of slowed-plugin lacks slowed_plugin/recipes/.")


def recipes() -> dict[str, Path]:
    """Recipe name (file name without ``.yaml``) -> path, sorted by name."""
    return {path.stem: path for path in sorted(recipe_dir().glob("*.yaml"))}


def summary(path: Path) -> str:
    """What a recipe is for: its first header sentence (``# name.yaml: what it is.``), which may run over several
    comment lines, without its parenthetical asides (timings, hardware), so that nothing is cut mid-parenthesis."""
    lines = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            text = line.strip()
            if not text.startswith("#") or not text.lstrip("# ").strip():
                break  # the header's first paragraph ends at a bare `#` or at the first key
            lines.append(text.lstrip("# ").strip())
    text = " ".join(lines)
    if ":" in text.split(" ", 1)[0]:  # `name.yaml: what it is`
        text = text.split(":", 1)[1].strip()
    text = re.sub(r"\s*\([^()]*\)", "", text)
    end = text.find(". ")
    return " ".join((text[: end + 1] if end >= 0 else text).split())


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action")
    copy = actions.add_parser("copy", help="Write a recipe into a folder (default: the current one).")
    copy.add_argument("name", help="Recipe name, as `slowed recipes` lists it (`.yaml` optional).")
    copy.add_argument("dir", nargs="?", default=".", help="Destination folder (created if missing).")
    copy.add_argument("--force", action="store_true", help="Overwrite an existing file.")


def run(args: argparse.Namespace) -> int:
    found = recipes()
    if getattr(args, "action", None) != "copy":
        width = max(map(len, found), default=0)
        for name, path in found.items():
            print(f"{name:<{width}}  {summary(path)}")
        print(
            f"\n`slowed recipes copy NAME [DIR]` writes one out; `slowed check NAME.yaml` checks it. ({recipe_dir()})"
        )
        return 0
    name = args.name.removesuffix(".yaml")
    if name not in found:
        print(f"slowed recipes: no recipe `{args.name}`; the recipes are {', '.join(found)}.", file=sys.stderr)
        return 2
    os.makedirs(args.dir, exist_ok=True)
    target = Path(args.dir) / f"{name}.yaml"
    if target.exists() and not args.force:
        print(f"slowed recipes: {target} exists; pass --force to overwrite it.", file=sys.stderr)
        return 2
    target.write_bytes(found[name].read_bytes())
    print(f"wrote {target}")
    return 0
