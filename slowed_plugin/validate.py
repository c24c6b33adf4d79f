"""The validation of every SLowED setting's value, written once; pure Python (no torch), so every layer uses it.

The config (:mod:`slowed_plugin.config`), the safety monitor's settings (:mod:`slowed_plugin.monitor.settings`)
and the torch-only core (``SlowTuner``, the reference mask, the masking scope) all check a value here, so a
value is refused with the same one-line message wherever it enters. A message is worded for the front end the
user wrote the value in (:class:`Spelling`): Python keywords (``tau=None``) or YAML keys under ``slowed:``
(``slowed.tau: null``).

Numbers are accepted as users write them (:func:`as_number`): ints, floats, numpy scalars, torch 0-d tensors,
and numbers written as text. One rule for text: a string that is a decimal number is that number, as if written
without quotes (``tau: "10"`` is ``tau: 10``; ``"0.2"`` is 0.2). It covers the scientific notation that PyYAML
reads as a string even unquoted (``5e-2``), which cannot be told apart from a quoted one after loading. They
are converted once, here.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any


class SLowEDConfigError(ValueError):
    """A SLowED setting that cannot be honoured; the message is one line naming key, value and what is allowed."""


@dataclass(frozen=True)
class Spelling:
    """How the user wrote the settings, so that a message names the key and suggests a fix in their syntax.

    ``prefix`` is where the keys live (``slowed`` for the YAML ``slowed:`` mapping, ``safety_monitor`` for the
    monitor's mapping given to ``SLowEDConfig``; empty for plain keywords); ``yaml`` picks the syntax.
    """

    prefix: str = ""
    yaml: bool = False

    def name(self, key: str = "") -> str:
        """The dotted path of ``key`` (of the whole mapping when ``key`` is empty), without backticks."""
        return ".".join(p for p in (self.prefix, key) if p)

    def key(self, key: str = "") -> str:
        return f"`{self.name(key)}`"

    def literal(self, value: Any) -> str:
        """``value`` as the user would write it: ``null``/``true``/``batch`` in YAML, ``None``/``True``/``'batch'``."""
        if self.yaml:
            if value is None or isinstance(value, bool):
                return {None: "null", True: "true", False: "false"}[value]
            return str(value)
        return repr(value)

    def setting(self, key: str, value: Any) -> str:
        """One setting as the user writes it: `` `tau: null` `` (YAML) or `` `tau=None` `` (Python)."""
        return f"`{key}: {self.literal(value)}`" if self.yaml else f"`{key}={self.literal(value)}`"

    def child(self, key: str) -> Spelling:
        return Spelling(self.name(key), self.yaml)


PYTHON = Spelling()
YAML = Spelling("slowed", yaml=True)


def yaml_spelling(key: str) -> Spelling:
    """The spelling of a YAML mapping at ``key`` (``slowed``, ``slowed.safety_monitor``)."""
    return Spelling(key, yaml=True)


# ---------------------------------------------------------------------------------------------- numbers
# Decimal numbers written as text: an integer (`10`), a decimal fraction (`0.2`), or scientific notation (`5e-2`,
# which PyYAML, following YAML 1.1, leaves as a string even unquoted). A quoted number reads as the unquoted one.
_INTEGER = re.compile(r"[-+]?[0-9]+")
_DECIMAL = re.compile(r"[-+]?(?:[0-9]+\.[0-9]*|\.[0-9]+)")
_SCIENTIFIC = re.compile(r"[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)[eE][-+]?[0-9]+")


def as_number(value: Any, integer: bool = False) -> int | float | None:
    """The plain ``int``/``float`` that ``value`` stands for, or None when it is not a number as users write them.

    Accepts ints, floats, numpy scalars and torch 0-d tensors (duck-typed: no import), and a decimal number in a
    string, read as the same number unquoted (``"10"`` as 10, ``"0.2"`` as 0.2, ``"5e-2"`` as 0.05). Refuses bools
    (``tau: true`` is a typo, not 1.0). With ``integer``, only integral types (and a string such as ``"3"``, or
    ``1e3`` that denotes an integer exactly) count: ``2.0`` (quoted or not) is not a number of steps. A float in
    lower precision (``np.float32(0.29)``) becomes the shortest decimal that it rounds from (0.29), the number
    the user wrote, not its binary expansion (0.28999999165534973). NaN and inf are returned: the caller refuses
    them with its own message.
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return None if integer else float(value)
    if isinstance(value, str):
        if _INTEGER.fullmatch(value):
            return int(value)
        if _DECIMAL.fullmatch(value):
            return None if integer else float(value)
        if not _SCIENTIFIC.fullmatch(value):
            return None
        if integer:
            exact = Decimal(value)
            return int(exact) if exact == exact.to_integral_value() else None
        return float(value)  # `1e400` -> inf, refused by the caller as not finite
    item, shape = getattr(value, "item", None), getattr(value, "shape", None)
    if not callable(item) or shape is None or tuple(shape) != () or "bool" in str(getattr(value, "dtype", "")):
        return None
    try:
        plain = item()
    except (TypeError, ValueError, RuntimeError):
        return None
    if isinstance(plain, bool) or not isinstance(plain, (int, float)):
        return None
    if isinstance(plain, int):
        return plain
    return None if integer else _shortest(plain, value)


def _shortest(plain: float, value: Any) -> float:
    """The shortest decimal that rounds to ``value`` in ``value``'s own precision (float32, float16, ...)."""
    if not math.isfinite(plain):
        return plain
    for digits in range(1, 18):
        candidate = float(f"{plain:.{digits}g}")
        try:
            back = value.new_tensor(candidate) if hasattr(value, "new_tensor") else type(value)(candidate)
            if bool(back == value):
                return candidate
        except (TypeError, ValueError, OverflowError):
            break
    return plain


def _finite(number: int | float | None) -> bool:
    if number is None:
        return False
    try:
        return math.isfinite(number)
    except OverflowError:  # an int beyond float's range: not a usable bound
        return False


def shown(value: Any) -> str:
    """``repr(value)`` for a message, with huge integers abbreviated (``10**400`` has 401 digits)."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 100:
        digits = math.floor(value.bit_length() * math.log10(2)) + 1
        return f"an integer of about {digits} digits"
    return repr(value)


# ---------------------------------------------------------------------------------------------- SLowED keys
def check_tau(value: Any, spelling: Spelling = PYTHON, optional: bool = True) -> float | None:
    """The radius as a float (None turns Slow Tuning off when ``optional``)."""
    if value is None and optional:
        return None
    number = as_number(value)
    if not _finite(number) or number <= 0:
        off = f", or {spelling.literal(None)} to turn Slow Tuning off" if optional else ""
        raise SLowEDConfigError(f"{spelling.key('tau')} must be a finite number > 0{off}; got {shown(value)}.")
    return float(number)


def check_mask_ratio(value: Any, spelling: Spelling = PYTHON) -> float:
    number = as_number(value)
    if not _finite(number) or not 0 <= number < 1:
        raise SLowEDConfigError(
            f"{spelling.key('mask_ratio')} must be a number with 0 <= mask_ratio < 1 (0 turns masking off); "
            f"got {shown(value)}."
        )
    return float(number)


def check_choice(key: str, value: Any, allowed: Iterable[str], spelling: Spelling = PYTHON) -> str:
    allowed = tuple(allowed)
    if not isinstance(value, str) or value not in allowed:
        raise SLowEDConfigError(f"{spelling.key(key)} must be one of {', '.join(allowed)}; got {value!r}.")
    return value


def check_every(value: Any, key: str = "project_every", spelling: Spelling = PYTHON) -> int | str:
    """``epoch`` or a positive number of optimizer steps (``project_every``, the monitor's ``every``)."""
    if value == "epoch" and isinstance(value, str):
        return value
    number = as_number(value, integer=True)
    if number is not None and number > 0:
        return number
    raise SLowEDConfigError(
        f"{spelling.key(key)} must be `epoch` or a positive number of optimizer steps; got {shown(value)}."
    )


def check_reference_scope(mask_scope: Any, spelling: Spelling = PYTHON) -> None:
    """``entropy_source: reference`` masks each example before batches exist: it needs ``mask_scope: sequence``."""
    if mask_scope != "sequence":
        raise SLowEDConfigError(
            f"{spelling.setting(spelling.name('entropy_source'), 'reference')} masks each example before "
            f"batches exist, so it needs {spelling.setting('mask_scope', 'sequence')}; "
            f"got {spelling.setting('mask_scope', mask_scope)}."
        )


def check_positive_int(value: Any, key: str, spelling: Spelling = PYTHON) -> int:
    number = as_number(value, integer=True)
    if number is None or number < 1:
        raise SLowEDConfigError(f"{spelling.key(key)} must be a positive integer; got {shown(value)}.")
    return number


def check_int(value: Any, key: str, spelling: Spelling = PYTHON) -> int:
    number = as_number(value, integer=True)
    if number is None:
        raise SLowEDConfigError(f"{spelling.key(key)} must be an integer; got {shown(value)}.")
    return number


def check_share(value: Any, key: str, spelling: Spelling = PYTHON) -> float | None:
    """A share in [0, 1], or None."""
    if value is None:
        return None
    number = as_number(value)
    if not _finite(number) or not 0 <= number <= 1:
        raise SLowEDConfigError(
            f"{spelling.key(key)} must be a number in [0, 1] (a share, 0.5 = half the prompts), or "
            f"{spelling.literal(None)}; got {shown(value)}."
        )
    return float(number)


def check_prompts(value: Any, key: str, spelling: Spelling = PYTHON) -> None:
    """A prompt source as the prompt loader reads it: a file or hub id (a non-empty string), or a list of strings."""
    if isinstance(value, str):
        if not value.strip():
            raise SLowEDConfigError(f"{spelling.key(key)} must not be empty.")
    elif not (isinstance(value, Sequence) and value and all(isinstance(p, str) for p in value)):
        raise SLowEDConfigError(
            f"{spelling.key(key)} must be a file, a hub dataset id, or a non-empty list of strings; got {value!r}."
        )


def check_prompted_block(
    value: Any, spelling: Spelling, keys: Iterable[str], what: str, example: str, prompts: str
) -> None:
    """The common shape of the ``safety_monitor`` and ``safety_anchor`` mappings: a mapping, of known ``keys``, with
    ``prompts`` (described by ``prompts``). ``what`` names the block in messages; ``example`` is one as written."""
    keys = tuple(keys)
    if not isinstance(value, Mapping):
        raise SLowEDConfigError(f"{spelling.key()} must be a mapping such as {example}; got {value!r}.")
    unknown = [k for k in value if k not in keys]
    if unknown:
        raise SLowEDConfigError(
            f"{spelling.key(str(unknown[0]))} is not a {what} key (got {value[unknown[0]]!r}); "
            f"allowed keys: {', '.join(keys)}."
        )
    if value.get("prompts") is None:
        where = spelling.name().rsplit(".", 1)[-1]
        written = f"`{where}: {example}`" if spelling.yaml else f"`{where}={example}`"
        raise SLowEDConfigError(f"{spelling.key('prompts')} is required: {prompts}, e.g. {written}.")


def check_use_chat_template(value: Any, spelling: Spelling = PYTHON) -> None:
    """``use_chat_template``: None (the tokenizer decides), True or False."""
    if value not in (None, True, False):
        allowed = ", ".join(spelling.literal(v) for v in (None, True))
        raise SLowEDConfigError(
            f"{spelling.key('use_chat_template')} must be {allowed} or {spelling.literal(False)}; got {value!r}."
        )


def check_optional_name(value: Any, key: str, spelling: Spelling = PYTHON) -> None:
    """None, or a non-empty string (a column name, a log key)."""
    if value is not None and (not isinstance(value, str) or not value):
        raise SLowEDConfigError(f"{spelling.key(key)} must be a non-empty string; got {value!r}.")


def check_bool(value: Any, key: str, spelling: Spelling = PYTHON) -> bool:
    if not isinstance(value, bool):
        raise SLowEDConfigError(
            f"{spelling.key(key)} must be {spelling.literal(True)} or {spelling.literal(False)}; got {value!r}."
        )
    return value
