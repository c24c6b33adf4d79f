"""Reading an Axolotl recipe file the way Axolotl does (``yaml.safe_load``), plus what PyYAML hides.

PyYAML keeps the last of two equal keys without a word, so ``slowed: {tau: 0.05, ..., tau: 10}`` would train
with tau 10, and a second top-level ``slowed:`` replaces the first. :func:`duplicate_slowed_keys` finds both, on
the YAML text, for ``slowed check`` and for Axolotl's config validation (which knows the file from
``axolotl_config_path``). Pure Python and PyYAML.
"""

from __future__ import annotations

import yaml

KEY = "slowed"


def _key_text(node: yaml.Node) -> str | None:
    return node.value if isinstance(node, yaml.ScalarNode) else None


def _duplicates(mapping: yaml.MappingNode, path: str, out: list[str]) -> None:
    seen: dict[str, list[int]] = {}
    for key_node, value_node in mapping.value:
        name = _key_text(key_node)
        if name is None:
            continue
        seen.setdefault(name, []).append(key_node.start_mark.line + 1)
        if isinstance(value_node, yaml.MappingNode):
            _duplicates(value_node, f"{path}.{name}", out)
    for name, lines in seen.items():
        if len(lines) > 1:
            out.append(
                f"`{path}.{name}` is written {len(lines)} times in `{path}:` (lines {', '.join(map(str, lines))}); "
                "YAML would silently keep only the last value, so write it once."
            )


def duplicate_slowed_keys(text: str) -> list[str]:
    """One line per duplicated top-level ``slowed:`` and per key written twice inside a ``slowed:`` mapping."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return []  # the loader reports invalid YAML itself
    if not isinstance(root, yaml.MappingNode):
        return []
    problems: list[str] = []
    tops = [(k, v) for k, v in root.value if _key_text(k) == KEY]
    if len(tops) > 1:
        lines = ", ".join(str(k.start_mark.line + 1) for k, _ in tops)
        problems.append(
            f"`{KEY}:` is written {len(tops)} times at the top level of the recipe (lines {lines}); YAML would "
            "silently keep only the last one, so write it once."
        )
    for _, value in tops:
        if isinstance(value, yaml.MappingNode):
            _duplicates(value, KEY, problems)
    return list(dict.fromkeys(problems))


def duplicate_slowed_keys_in_file(path: str) -> list[str]:
    """:func:`duplicate_slowed_keys` of a file; nothing when it cannot be read (its loader reports that)."""
    try:
        with open(path, encoding="utf-8") as handle:
            return duplicate_slowed_keys(handle.read())
    except (OSError, UnicodeDecodeError):
        return []
