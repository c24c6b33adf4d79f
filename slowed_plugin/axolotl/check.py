"""``slowed check RECIPE.yaml``: will this Axolotl recipe train with SLowED on?

Axolotl drops config keys it does not know and skips a plugin whose import fails, so a typo in
``plugins:`` or ``slowed:`` trains *without* SLowED and says nothing. This check is the safety net:
it loads the YAML, resolves every ``plugins:`` entry the way Axolotl does, validates ``slowed:``
and its cross-key rules, runs Axolotl's own schema validation with the listed plugins loaded (no
model, no network), prints the resolved settings, and exits non-zero when:

- ``slowed:`` is set but no ``plugins:`` entry loads ``SLowEDPlugin`` (missing, misspelled, not importable);
- ``SLowEDPlugin`` is listed but there is no ``slowed:`` key (or it is null);
- ``slowed:`` or its combination with other keys fails validation, or Axolotl rejects the config;
- an installed dependency is outside the range SLowED supports (:mod:`slowed_plugin.versions`).

Module imports stay light (``slowed --help`` imports this module); axolotl is imported in :func:`run`.
"""

from __future__ import annotations

import argparse
import copy
import difflib
import importlib
import importlib.util
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

import yaml

from ..config import SLowEDConfig
from ..rules import AXOLOTL, axolotl_problems, read_deepspeed_config, zero_stage
from ..rules.engines import deepspeed_refusal
from . import PLUGIN_NAME
from .recipe import duplicate_slowed_keys

OK, FAILED = 0, 1


@dataclass
class Report:
    """What ``slowed check`` found in one recipe."""

    path: str
    lines: list[tuple[str, str]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    config: SLowEDConfig | None = None
    plugin: str | None = None  # the `plugins:` entry that loads SLowEDPlugin

    def note(self, label: str, text: str) -> None:
        self.lines.append((label, text))

    def error(self, text: str) -> None:
        self.errors.append(text)
        self.lines.append(("error", text))

    @property
    def active(self) -> bool:
        return not self.errors and self.plugin is not None and self.config is not None and self.config.active

    @property
    def verdict(self) -> str:
        if self.errors:
            return f"FAILED: {len(self.errors)} problem(s); as written this recipe does not train with the SLowED it asks for"
        if self.plugin is None and self.config is None:
            return "OK: this recipe does not use SLowED (no plugin, no `slowed:` key)"
        if not self.active:
            return (
                "OK: SLowED is loaded but both mechanisms are off (`tau: null`, `mask_ratio: 0`): training is unchanged"
            )
        return "OK: SLowED will be active"


# ---------------------------------------------------------------------------------------------- steps
def _load_yaml(path: str, report: Report) -> dict[str, Any] | None:
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
        data = yaml.safe_load(text)
    except OSError as err:
        report.error(f"cannot read {path}: {err.strerror or err}.")
        return None
    except yaml.YAMLError as err:
        report.error(f"{path} is not valid YAML: {' '.join(str(err).split())}")
        return None
    if not isinstance(data, Mapping):
        report.error(f"{path} must hold a mapping of Axolotl keys; got {type(data).__name__}.")
        return None
    for problem in duplicate_slowed_keys(text):
        report.error(problem)
    return dict(data)


def _resolve_plugin(name: Any) -> tuple[type | None, str | None]:
    """Import a ``plugins:`` entry as Axolotl's ``load_plugin`` does.

    Returns (class, None), or (None, what Axolotl would do and why).
    """
    if not isinstance(name, str) or "." not in name:
        return None, "Axolotl cannot load it: a plugin is written `module.ClassName`"
    module_name, class_name = name.rsplit(".", 1)
    try:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            if module_name.startswith("axolotl.integrations."):
                raise
            try:
                module = importlib.import_module("axolotl.integrations." + module_name)
            except ModuleNotFoundError:
                raise err from None
    except ImportError as err:
        return None, f"{type(err).__name__}: {err}; Axolotl logs this and trains without it"
    try:
        return getattr(module, class_name), None
    except ImportError as err:  # a lazy attribute whose import fails (ours needs axolotl)
        return None, f"{type(err).__name__}: {err}; Axolotl logs this and trains without it"
    except AttributeError:
        return None, f"module `{module_name}` has no `{class_name}`; Axolotl stops with an AttributeError"


def _is_slowed_plugin(plugin_class: type | None) -> bool:
    if plugin_class is None:
        return False
    from .plugin import SLowEDPlugin

    return isinstance(plugin_class, type) and issubclass(plugin_class, SLowEDPlugin)


def _looks_like_slowed(name: Any) -> bool:
    text = str(name).lower()
    return "slowed" in text or difflib.SequenceMatcher(None, text, PLUGIN_NAME.lower()).ratio() > 0.7


AXOLOTL_MISSING = "axolotl is not installed (pip install 'slowed-plugin[axolotl]'); the recipe cannot be checked."


def _axolotl_installed() -> bool:
    try:
        return importlib.util.find_spec("axolotl") is not None
    except (ImportError, ValueError):
        return False


def _check_plugins(data: Mapping[str, Any], report: Report) -> list[str] | None:
    """Resolve every ``plugins:`` entry; return the importable ones (they are what Axolotl would load),
    or None when axolotl itself is missing (then every entry fails to load, and that is the one cause)."""
    if not _axolotl_installed():
        report.error(AXOLOTL_MISSING)
        return None
    plugins = data.get("plugins") or []
    if not isinstance(plugins, Sequence) or isinstance(plugins, str):
        report.error(f"`plugins` must be a list of `module.ClassName` entries; got {plugins!r}.")
        return []
    importable: list[str] = []
    for name in plugins:
        plugin_class, reason = _resolve_plugin(name)
        if plugin_class is None:
            text = f"`plugins:` entry `{name}` cannot be loaded ({reason})"
            if _looks_like_slowed(name):
                report.error(f"{text}. Did you mean `{PLUGIN_NAME}`?")
            else:
                report.note("warning", text + ".")
            continue
        importable.append(name)
        try:
            ours = _is_slowed_plugin(plugin_class)
        except ImportError as err:  # axolotl itself is missing
            report.error(f"the SLowED plugin cannot be imported ({err}); install `slowed-plugin[axolotl]`.")
            return importable
        if ours and report.plugin is None:
            report.plugin = name
            report.note("plugin", f"{name}: importable")
    return importable


def _check_key(data: Mapping[str, Any], report: Report) -> None:
    near = [k for k in data if isinstance(k, str) and k != "slowed"]
    typos = [k for k in near if k.lower() == "slowed"] + difflib.get_close_matches("slowed", near, n=2, cutoff=0.75)
    typo_hint = f" `{typos[0]}:` is not a key Axolotl knows and is dropped; did you mean `slowed:`?" if typos else ""

    if "slowed" not in data:
        if report.plugin is not None:
            report.error(
                f"`plugins:` lists {report.plugin} but the recipe has no `slowed:` key, so SLowED stays off.{typo_hint} "
                "Add e.g. `slowed: [10.0, 0.2]` (short form [tau, mask_ratio])."
            )
        elif typos:
            report.error(typo_hint.strip())
        return
    if report.plugin is None:
        report.error(
            f"`slowed:` is set but no `plugins:` entry loads {PLUGIN_NAME}: Axolotl drops the key and trains "
            f"without SLowED. Add `plugins: [{PLUGIN_NAME}]`."
        )
    value = data["slowed"]
    if value is None:
        report.error("`slowed:` is empty (null), so SLowED stays off; write e.g. `slowed: [10.0, 0.2]`.")
        return
    try:
        config = SLowEDConfig.from_value(value, key="slowed")
    except ValueError as err:
        report.error(str(err))
        return
    report.config = config
    report.note("slowed", config.describe())
    report.note("resolved", "slowed: " + _flow(config.resolved()))
    plan = deepspeed_plan(data.get("deepspeed"), config)
    if plan is not None:
        report.note("engine", plan)
    problems = axolotl_problems(data, config)
    for problem in problems:
        report.error(problem)
    if not problems:  # the schema validation below reuses this config instead of parsing it again
        from .args import remember

        remember(data, config)


def deepspeed_plan(value: Any, config: SLowEDConfig) -> str | None:
    """One line for the report: what SLowED does under the DeepSpeed config that an Axolotl ``deepspeed:`` value
    names, or None without DeepSpeed. A refusal itself is reported by the rule, with its fix."""
    if not value or not config.active:
        return None
    ds = read_deepspeed_config(value)
    if ds is None:
        return (
            f"`deepspeed: {value}` is not readable from here, so its stage is checked when training starts: ZeRO-1/2 "
            "mask on the hidden states, ZeRO-3 on the logits; Slow Tuning projects through ZeRO's fp32 masters and "
            "refuses stage 0 and `offload_optimizer`."
        )
    stage = zero_stage(ds)
    if not config.slow_tuning:
        tuning = "Slow Tuning off"
    elif deepspeed_refusal("", ds, AXOLOTL) is not None:
        tuning = "Slow Tuning refused (see the error for the fix)"
    else:
        tuning = "Slow Tuning projects through ZeRO's fp32 masters"
    if not config.masking:
        masking = "masking off"
    elif not config.online_masking:
        masking = "masking in the labels (`entropy_source: reference`)"
    elif stage == 3:
        masking = "masking on the logits (ZeRO-3 partitions the head's weight)"
    else:
        masking = "masking on the hidden states"
    return f"DeepSpeed ZeRO-{stage}: {tuning}; {masking}."


def _flow(mapping: Mapping[str, Any]) -> str:
    return yaml.safe_dump(dict(mapping), default_flow_style=True, sort_keys=False, width=1000).strip()


def _validation_message(err: Exception) -> str:
    errors = getattr(err, "errors", None)
    if callable(errors):
        try:
            parts = []
            for item in errors():
                loc = ".".join(str(p) for p in item.get("loc", ()))
                msg = str(item.get("msg", "")).removeprefix("Value error, ")
                parts.append(f"{loc}: {msg}" if loc else msg)
            return "; ".join(parts)
        except Exception:  # noqa: BLE001 - fall back to the plain text
            pass
    return " ".join(str(err).split())


def _check_schema(data: Mapping[str, Any], plugins: list[str], report: Report) -> None:
    """Axolotl's own config validation with exactly this recipe's plugins registered."""
    try:
        import axolotl
        from axolotl.integrations.base import PluginManager
        from axolotl.utils.config import validate_config
        from axolotl.utils.dict import DictDefault
    except ImportError as err:
        report.error(f"Axolotl is not installed ({err}); install `slowed-plugin[axolotl]` to check the schema.")
        return
    manager = PluginManager.get_instance()
    # The manager is a process-wide singleton: validate with this recipe's plugins only, then restore it.
    saved = dict(manager.plugins)
    manager.plugins.clear()
    try:
        for name in plugins:
            manager.register(name)
        validated = validate_config(DictDefault(copy.deepcopy(dict(data))))
    except Exception as err:  # noqa: BLE001 - any rejection is reported, not raised
        message = _validation_message(err)
        if not any(message.endswith(e) or e in message for e in report.errors):
            report.error(f"Axolotl {axolotl.__version__} rejects the config: {message}")
        return
    finally:
        manager.plugins.clear()
        manager.plugins.update(saved)
    kept = validated.get("slowed") is not None
    if report.plugin is not None and report.config is not None and not kept:
        report.error("Axolotl's validated config lost `slowed:`; the SLowED plugin's arguments were not merged.")
        return
    detail = "; `slowed` kept after validation" if kept else ""
    report.note("schema", f"valid for Axolotl {axolotl.__version__}{detail}")


def _check_versions(report: Report) -> None:
    """The installed dependencies against the supported ranges, as training will check them."""
    from ..versions import allowed, refusal, version_findings

    message = refusal(version_findings())
    if message is None:
        report.note("versions", "every installed dependency is inside its supported range")
    elif allowed():
        report.note("versions", f"WARNING, allowed by SLOWED_ALLOW_UNSUPPORTED: {message}")
    else:
        report.error(message)


def check_recipe(path: str) -> Report:
    """Run every check on one recipe file."""
    report = Report(path)
    data = _load_yaml(path, report)
    if data is None:
        return report
    plugins = _check_plugins(data, report)
    if plugins is None:
        return report
    _check_key(data, report)
    if data.get("slowed") is not None:
        _check_versions(report)
    _check_schema(data, plugins, report)
    return report


def print_report(report: Report, stream: TextIO) -> None:
    print(report.path, file=stream)
    for label, text in report.lines:
        print(f"  {label:<9}{text}", file=stream)
    print(f"  {'result':<9}{report.verdict}", file=stream)


def check_recipes(paths: Sequence[str], stream: TextIO | None = None) -> int:
    """Check each recipe and print its report; the exit status is non-zero if any recipe fails."""
    stream = stream if stream is not None else sys.stdout
    status = OK
    for path in paths:
        try:
            report = check_recipe(path)
        except Exception as err:  # noqa: BLE001 - one recipe's surprise must not hide the others' results
            report = Report(path)
            report.error(
                f"checking this recipe failed unexpectedly: {type(err).__name__}: {' '.join(str(err).split())}"
            )
        print_report(report, stream)
        if report.errors:
            status = FAILED
    return status


# ---------------------------------------------------------------------------------------------- `slowed check`
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recipes", nargs="+", metavar="RECIPE.yaml", help="Axolotl recipe(s) to check")


def run(args: argparse.Namespace) -> int:
    import logging

    # Axolotl's plugin manager logs each registration at INFO; the report says what matters.
    logging.getLogger("axolotl").setLevel(logging.WARNING)
    return check_recipes(args.recipes)
