"""The private (or undocumented) attributes of other libraries that SLowED touches: one table, and the check that
refuses an attribute whose signature SLowED does not know, before it is used.

transformers and TRL do not promise these, so a new release may rename or re-sign any of them. Each is reached
through :func:`require` (called where SLowED uses it, when it attaches): a missing attribute, or a method whose
parameters are not a signature listed here, stops SLowED with one line instead of computing something else.
"checked" names the versions SLowED's tests passed with: the floors job (pyproject's lower bounds), the main job
(Axolotl's pins) and ``scripts/newest.sh`` (the newest releases the ranges allow; last run: transformers 5.25.0,
trl 1.16.0). Nothing outside this table reads a private
attribute of transformers or TRL (``tests/trainer/test_private_api.py`` greps the package for it). The private
attributes of other libraries (the interpreter, Axolotl, tqdm, DeepSpeed, argparse), only read, are
:data:`OTHER_READS`, each with the one module that reads it; the test fails on a private read outside it.

=====================================  ===========================  =================================================
attribute                              checked                      what SLowED does with it
=====================================  ===========================  =================================================
``transformers.Trainer``               transformers 5.10.1, 5.16.1  wrapped (masking): ``num_items_in_batch`` becomes
``.get_batch_samples``                 and 5.25.0                   the kept targets of the step (exact GA and DDP)
``transformers.Trainer``               transformers 5.10.1, 5.16.1  called (masking) on stand-in batches, so the
``._get_num_items_in_batch``           and 5.25.0                   trainer's own cross-device count applies; it
                                                                    must count ``shift_labels`` where a batch has
                                                                    them (up to 5.9 it counted ``labels``: wrong
                                                                    numbers, hence the transformers floor)
``trl.SFTTrainer._prepare_dataset``    trl 1.4.0, 1.9.0, 1.16.0     called (safety anchor): the anchor rows are
                                                                    tokenized as the training set was
``trl.SFTTrainer``                     trl 1.9.0, 1.16.0 (not 1.4)  read (safety anchor): whether TRL skipped data
``._skip_prepare_dataset``                                          preparation; absent: derived as TRL 1.4.0 does,
                                                                    from ``args`` and the next row
``trl.SFTTrainer._is_vision_dataset``  trl 1.4.0, 1.9.0, 1.16.0     read (safety anchor), only where the row above
                                                                    is absent; absent too: False
=====================================  ===========================  =================================================
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import FrameType
from typing import Any


class UnknownPrivateAPIError(RuntimeError):
    """A private attribute SLowED needs is missing or has a signature it does not know; one line."""


@dataclass(frozen=True)
class PrivateAttribute:
    """One row of the table: ``owner.name``, the signatures known (parameter names without ``self``; None for a
    value that is read, not called), and the package whose versions were checked."""

    owner: str
    name: str
    signatures: tuple[tuple[str, ...], ...] | None
    package: str
    why: str

    @property
    def label(self) -> str:
        return f"{self.owner.rsplit('.', 1)[-1]}.{self.name}"


GET_BATCH_SAMPLES = PrivateAttribute(
    "transformers.Trainer",
    "get_batch_samples",
    (("epoch_iterator", "num_batches", "device"),),
    "transformers",
    "the exact token count of Low-Entropy Masking",
)
GET_NUM_ITEMS_IN_BATCH = PrivateAttribute(
    "transformers.Trainer",
    "_get_num_items_in_batch",
    (("batch_samples", "device"),),
    "transformers",
    "the exact token count of Low-Entropy Masking",
)
PREPARE_DATASET = PrivateAttribute(
    "trl.SFTTrainer",
    "_prepare_dataset",
    (("dataset", "processing_class", "args", "packing", "formatting_func", "dataset_name"),),
    "trl",
    "tokenizing the safety anchor's rows",
)
SKIP_PREPARE_DATASET = PrivateAttribute(
    "trl.SFTTrainer", "_skip_prepare_dataset", None, "trl", "the safety anchor's data preparation"
)
IS_VISION_DATASET = PrivateAttribute(
    "trl.SFTTrainer", "_is_vision_dataset", None, "trl", "the safety anchor's data preparation"
)

TABLE: tuple[PrivateAttribute, ...] = (
    GET_BATCH_SAMPLES,
    GET_NUM_ITEMS_IN_BATCH,
    PREPARE_DATASET,
    SKIP_PREPARE_DATASET,
    IS_VISION_DATASET,
)


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "(not installed)"


def require(obj: Any, attribute: PrivateAttribute) -> Callable[..., Any]:
    """``getattr(obj, attribute.name)``, a method whose parameters are a known signature; otherwise
    :class:`UnknownPrivateAPIError` naming the attribute, the version installed and the signatures known."""
    found = getattr(obj, attribute.name, None)
    where = f"`{type(obj).__name__}.{attribute.name}`"
    if not callable(found):
        problem = f"has no {where}"
    else:
        try:
            signature = inspect.signature(found)
        except (TypeError, ValueError):
            signature = None
        names = tuple(signature.parameters) if signature is not None else None
        if attribute.signatures is None or names in attribute.signatures:
            return found
        problem = f"has {where}{signature}, a signature SLowED does not know"
    known = ", ".join("(" + ", ".join(s) + ")" for s in attribute.signatures or ())
    raise UnknownPrivateAPIError(
        f"SLowED needs {attribute.owner}.{attribute.name} for {attribute.why}, and {attribute.package} "
        f"{_version(attribute.package)} {problem} (known: {known}; slowed_plugin/trainer/private_api.py). Install "
        f"a {attribute.package} version CI tested (`python -m slowed_plugin.versions`), or turn that feature off."
    )


def skips_dataset_preparation(trainer: Any) -> bool:
    """Whether TRL's ``SFTTrainer`` skipped its data preparation (``dataset_kwargs={'skip_prepare_dataset': True}``,
    or a vision dataset), on every supported TRL: ``_skip_prepare_dataset`` where TRL keeps it (1.9.0 does), else
    as TRL 1.4.0 computes it in ``__init__``."""
    kept = getattr(trainer, SKIP_PREPARE_DATASET.name, None)
    if kept is not None:
        return bool(kept)
    kwargs = getattr(trainer.args, "dataset_kwargs", None) or {}
    return bool(kwargs.get("skip_prepare_dataset", False) or getattr(trainer, IS_VISION_DATASET.name, False))


# The first TRL whose SFTTrainer computes its loss from the fused LM head (`add_fused_lm_head`).
FUSED_LM_HEAD_TRL = "1.15.0"


def fused_lm_head_trl() -> bool:
    """Whether the installed TRL's ``SFTTrainer`` computes its training loss through the fused LM head."""
    from importlib.metadata import PackageNotFoundError, version

    from packaging.version import Version

    try:
        return Version(version("trl")) >= Version(FUSED_LM_HEAD_TRL)
    except PackageNotFoundError:
        return False


# ---------------------------------------------------------------------------------------------- other libraries
@dataclass(frozen=True)
class PrivateRead:
    """A private attribute of another library that SLowED reads (never calls with a signature it must know), and
    the one module that reads it: this one where the layers allow, else the lowest module that needs it (a core
    module or ``log.py`` must not import the trainer's)."""

    owner: str
    names: tuple[str, ...]
    module: str  # the reader, relative to slowed_plugin/
    why: str


OTHER_READS: tuple[PrivateRead, ...] = (
    PrivateRead(
        "sys",
        ("_getframe",),
        "trainer/private_api.py",
        "the trainer a callback is registered on, found on the call stack (:func:`caller_frames`, trainer/find_trainer.py)",
    ),
    PrivateRead(
        "axolotl.telemetry.manager.TelemetryManager",
        ("_instance",),
        "trainer/private_api.py",
        "whether Axolotl's telemetry is on before the guard exits (:func:`axolotl_telemetry_manager`)",
    ),
    PrivateRead(
        "tqdm.tqdm", ("_instances",), "log.py", "whether a progress bar is open, so that a log line does not tear it"
    ),
    PrivateRead(
        "deepspeed parameters",
        ("ds_id", "ds_status", "ds_shape"),
        "core/weight_access.py",
        "whether a parameter is a ZeRO-3 partition, and its full shape (that module's functions, for every caller)",
    ),
    PrivateRead("argparse", ("_SubParsersAction",), "cli.py", "the sub-command parser's type (no public name)"),
)


def caller_frames(depth: int = 1) -> Iterator[FrameType]:
    """The frames of the call stack from ``depth`` above the caller outward (``sys._getframe``: CPython's, and
    every interpreter transformers supports)."""
    frame: FrameType | None = sys._getframe(depth + 1)
    while frame is not None:
        yield frame
        frame = frame.f_back


def axolotl_telemetry_manager() -> Any:
    """Axolotl's telemetry manager if this process created one (its singleton ``TelemetryManager._instance``),
    else None; never imports Axolotl."""
    manager = getattr(sys.modules.get("axolotl.telemetry.manager"), "TelemetryManager", None)
    return getattr(manager, "_instance", None)
