"""The one table of private attributes SLowED touches: an unknown one is refused in one line, and nothing outside
the table module reaches for a private attribute of a trainer."""

from __future__ import annotations

import re
import types
from pathlib import Path

import pytest

from slowed_plugin.trainer.private_api import (
    GET_NUM_ITEMS_IN_BATCH,
    PREPARE_DATASET,
    TABLE,
    UnknownPrivateAPIError,
    require,
    skips_dataset_preparation,
)

PACKAGE = Path(__file__).resolve().parents[2] / "slowed_plugin"


class _Known:
    def _prepare_dataset(self, dataset, processing_class, args, packing, formatting_func, dataset_name):
        return dataset


class _Reordered:
    def _prepare_dataset(self, dataset, args, processing_class, packing, formatting_func, dataset_name):
        return dataset


def test_a_known_signature_is_handed_back():
    trainer = _Known()
    assert require(trainer, PREPARE_DATASET)("rows", None, None, False, None, "x") == "rows"


@pytest.mark.parametrize("trainer", [_Reordered(), types.SimpleNamespace()], ids=["reordered", "missing"])
def test_an_unknown_or_missing_attribute_is_refused_in_one_line(trainer):
    with pytest.raises(UnknownPrivateAPIError) as caught:
        require(trainer, PREPARE_DATASET)
    message = str(caught.value)
    assert "\n" not in message and "trl.SFTTrainer._prepare_dataset" in message and "trl " in message
    assert "(dataset, processing_class, args, packing, formatting_func, dataset_name)" in message


def test_get_num_items_in_batch_row_names_transformers():
    with pytest.raises(UnknownPrivateAPIError, match=r"transformers \S+ has no `SimpleNamespace\._get_num_items"):
        require(types.SimpleNamespace(), GET_NUM_ITEMS_IN_BATCH)


def test_skipped_preparation_is_read_where_trl_keeps_it_and_derived_where_it_does_not():
    args = types.SimpleNamespace(dataset_kwargs={"skip_prepare_dataset": True})
    assert skips_dataset_preparation(types.SimpleNamespace(args=args))  # TRL 1.4.0: no attribute
    assert not skips_dataset_preparation(types.SimpleNamespace(args=types.SimpleNamespace(dataset_kwargs=None)))
    assert not skips_dataset_preparation(types.SimpleNamespace(args=args, _skip_prepare_dataset=False))


def test_no_private_attribute_of_a_trainer_is_reached_outside_the_table():
    names = {row.name for row in TABLE if row.name.startswith("_")}
    # a model's config too: `config._name_or_path` has the public `config.name_or_path`
    direct = re.compile(
        r"\b(?:trainer|self\.trainer|sft|model|config)\._[a-z]\w*"
        r"|(?:getattr|hasattr)\(\s*(?:trainer|model|config)\s*,\s*\"_"
        r"|getattr\(\s*getattr\([^)]*\)\s*,\s*\"_"
    )
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if path.name == "private_api.py":
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            code = line.split("#", 1)[0]
            if direct.search(code) or any(re.search(rf"[.\"']{name}\b", code) for name in names):
                if "``" not in line:  # prose in a docstring names them
                    offenders.append(f"{path.relative_to(PACKAGE)}:{number}: {line.strip()}")
    assert not offenders, offenders


def _private_reads() -> set[tuple[str, str]]:
    """``(file, attribute)`` for every read of a private attribute of another library: ``x._name`` (any receiver
    but ``self``/``cls``) or ``getattr(x, "_name")`` where the package defines no ``_name`` itself, and every
    DeepSpeed ``ds_*`` attribute."""
    import ast

    trees = {path: ast.parse(path.read_text(encoding="utf-8")) for path in PACKAGE.rglob("*.py")}
    own: set[str] = set()
    for tree in trees.values():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                own.add(node.name)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                own.add(node.id)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                own.add(node.attr)
            elif isinstance(node, (ast.arg, ast.keyword)) and (node.arg or "").startswith("_"):
                own.add(node.arg)
            elif isinstance(node, ast.alias):
                own.add((node.asname or node.name).split(".")[-1])
    found = set()
    for path, tree in trees.items():
        for node in ast.walk(tree):
            name = None
            if isinstance(node, ast.Attribute):
                receiver = node.value
                if not (isinstance(receiver, ast.Name) and receiver.id in ("self", "cls")):
                    name = node.attr
            elif isinstance(node, ast.Call) and getattr(node.func, "id", None) in ("getattr", "hasattr"):
                if len(node.args) > 1 and isinstance(node.args[1], ast.Constant):
                    name = node.args[1].value
            if not isinstance(name, str):
                continue
            private = name.startswith("_") and not name.startswith("__") and name not in own
            if private or name.startswith("ds_"):
                found.add((path.relative_to(PACKAGE).as_posix(), name))
    return found


# Documented public names that start with an underscore.
PUBLIC_UNDERSCORE = {"_exit"}  # os._exit


def test_every_private_read_of_another_library_is_in_the_table():
    """Any receiver, not only trainer/model/config (issue 32, item 4): each read is a row of OTHER_READS, read
    in the module that row names."""
    from slowed_plugin.trainer.private_api import OTHER_READS

    allowed = {(row.module, name) for row in OTHER_READS for name in row.names}
    found = {(path, name) for path, name in _private_reads() if name not in PUBLIC_UNDERSCORE}
    assert found <= allowed, f"private reads outside slowed_plugin/trainer/private_api.py: {sorted(found - allowed)}"
    unused = {row.module for row in OTHER_READS} - {path for path, _ in found}
    assert not unused, f"rows no module needs any more: {sorted(unused)}"


def test_the_stack_walk_and_the_telemetry_singleton_go_through_the_table_module():
    from slowed_plugin.trainer import private_api

    def inner():
        names = []
        for frame in private_api.caller_frames(0):  # iterated by the caller itself, as trainer/find_trainer.py does
            names.append(frame.f_code.co_name)
        return names

    assert inner()[:2] == ["inner", "test_the_stack_walk_and_the_telemetry_singleton_go_through_the_table_module"]
    assert private_api.axolotl_telemetry_manager() is None or hasattr(
        private_api.axolotl_telemetry_manager(), "enabled"
    )
