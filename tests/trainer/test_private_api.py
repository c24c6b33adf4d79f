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
