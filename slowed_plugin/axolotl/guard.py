"""The train-time guard: ``axolotl train`` stops before the model loads when a recipe asks for SLowED
(``slowed:`` is set) but no ``plugins:`` entry loaded :class:`~slowed_plugin.SLowEDPlugin`.

Axolotl drops config keys it does not know and skips a plugin whose import fails, so without this a
recipe with a misspelled or missing plugin line trains plain SFT and exits 0. None of our code is
listed in such a recipe, and Axolotl 0.19 runs no third-party code on ``axolotl train`` by itself:
its ``axolotl.cli_commands`` entry points are read only for a command name it does not know (or for
``--help``), and training runs in a fresh ``accelerate launch -m axolotl.cli.train`` process that
imports only the listed plugins. What every Axolotl run does do is validate its config with pydantic,
and pydantic loads *plugins* from the ``pydantic`` entry-point group of every installed package
(https://docs.pydantic.dev/latest/concepts/plugins/). This module is such a plugin (registered in
``pyproject.toml``): it watches the validation of Axolotl's config model only (``AxolotlInputConfig``
and ``AxolotlConfigWCapabilities`` from ``axolotl.*``; every other pydantic model in the process is
left unwrapped) and, on entry, raises :class:`SLowEDGuardError` when ``slowed:`` is set and none of
the recipe's ``plugins:`` is a loaded ``SLowEDPlugin``. Validation runs in ``load_cfg`` before the
datasets and the model, and before the output folder is created.

The same plugin makes SLowED's own validation errors (``SLowEDConfigError``, e.g. ``mask_ratio: 1.5``) end an
uncaught run with one line instead of pydantic's traceback, and end it promptly: Axolotl's telemetry (on unless
``AXOLOTL_DO_NOT_TRACK=1``) flushes at exit, and with the network unreachable its retries wait for minutes. For
these errors the queued events get ``TELEMETRY_GRACE_S`` seconds to leave; when they could not, a second line says
that they were dropped and how to turn telemetry off. Every other error keeps Axolotl's own exit.

Off switches: ``SLOWED_AXOLOTL_GUARD=0``, or pydantic's own ``PYDANTIC_DISABLE_PLUGINS=slowed-guard``.
This module imports nothing heavy: pydantic loads it in every process of the environment that
validates a pydantic model.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Mapping
from typing import Any

PLUGIN_NAME = "slowed_plugin.SLowEDPlugin"  # as in slowed_plugin.axolotl (not imported: keep this light)
ENV_SWITCH = "SLOWED_AXOLOTL_GUARD"
# Axolotl's config models: the base ones, and the subclasses that merge_input_args builds with plugins.
WATCHED = frozenset({"AxolotlInputConfig", "AxolotlConfigWCapabilities"})
# How long SLowED's own config error lets Axolotl's telemetry send its queued events before the process exits.
TELEMETRY_GRACE_S = 5.0


class SLowEDGuardError(ValueError):
    """A recipe sets ``slowed:`` but would train without SLowED."""


def problem(cfg: Mapping[str, Any], loaded: Mapping[str, Any]) -> str | None:
    """Why ``cfg`` would train without the SLowED it asks for, or None.

    ``loaded`` maps the ``plugins:`` entries Axolotl managed to load to their instances (its
    ``PluginManager.plugins``); an entry whose import failed is absent from it.
    """
    if cfg.get("slowed") is None:
        return None
    listed = cfg.get("plugins") or []
    if isinstance(listed, str) or not isinstance(listed, list | tuple):
        listed = [listed]
    if any(_is_slowed_plugin(loaded.get(name)) for name in listed if isinstance(name, str)):
        return None
    # The text of `slowed check`'s own error, so that the check reports it once when both run.
    text = (
        f"`slowed:` is set but no `plugins:` entry loads {PLUGIN_NAME}: Axolotl drops the key and trains "
        f"without SLowED. Add `plugins: [{PLUGIN_NAME}]`."
    )
    if listed:
        failed = [str(name) for name in listed if not isinstance(name, str) or name not in loaded]
        shown = ", ".join(f"`{name}`" for name in failed) if failed else "none of them is SLowEDPlugin"
        text += f" Listed but not loaded: {shown}."
    return f"{text} Stopped before loading the model; `slowed check RECIPE.yaml` explains ({ENV_SWITCH}=0 skips this)."


def _is_slowed_plugin(instance: Any) -> bool:
    # By class name and module, so that a recipe without SLowED never imports our plugin module (torch).
    return instance is not None and any(
        klass.__name__ == "SLowEDPlugin" and klass.__module__.startswith("slowed_plugin.")
        for klass in type(instance).__mro__
    )


def _loaded_plugins() -> Mapping[str, Any]:
    try:
        from axolotl.integrations.base import PluginManager
    except ImportError:
        return {}
    return PluginManager.get_instance().plugins


def own_error_message(exc: BaseException) -> str | None:
    """The one line for an error that SLowED raised about the config, or None for any other error.

    That is the guard's own :class:`SLowEDGuardError`, or a pydantic ``ValidationError`` every one of whose
    errors is a ``SLowEDConfigError`` from the ``slowed:`` validator (recognised by class name and module, so
    that this module imports nothing of ours).
    """
    if isinstance(exc, SLowEDGuardError):
        return str(exc)
    errors = getattr(exc, "errors", None)
    if type(exc).__name__ != "ValidationError" or not callable(errors):
        return None
    try:
        originals = [(detail.get("ctx") or {}).get("error") for detail in errors()]
    except Exception:  # noqa: BLE001 - an error we cannot read is not ours
        return None
    if not originals or not all(_is_slowed_config_error(error) for error in originals):
        return None
    return " ".join(str(error) for error in originals)


def _is_slowed_config_error(error: Any) -> bool:
    return isinstance(error, ValueError) and any(
        klass.__name__ == "SLowEDConfigError" and klass.__module__.startswith("slowed_plugin.")
        for klass in type(error).__mro__
    )


def telemetry_flushed(seconds: float) -> bool:
    """Whether Axolotl's telemetry queue, if telemetry is on in this process, empties within ``seconds``."""
    from ..trainer.private_api import axolotl_telemetry_manager  # standard library only: stays light

    manager = axolotl_telemetry_manager()
    posthog = sys.modules.get("posthog")
    if manager is None or not getattr(manager, "enabled", False) or posthog is None:
        return True
    sender = threading.Thread(target=posthog.flush, name="slowed-telemetry-flush", daemon=True)
    sender.start()
    sender.join(seconds)
    return not sender.is_alive()


def _exit_now(code: int) -> None:
    """Exit without running the interpreter's exit handlers, after the telemetry's grace period (see the module)."""
    import logging

    logging.shutdown()
    if not telemetry_flushed(TELEMETRY_GRACE_S):
        print(
            f"slowed: note: Axolotl's telemetry could not send this error within {TELEMETRY_GRACE_S:g} s (network "
            "unreachable?); exiting without it. AXOLOTL_DO_NOT_TRACK=1 turns Axolotl's telemetry off.",
            file=sys.stderr,
        )
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


def _one_line_excepthook(previous: Any, exit_now: Any = _exit_now) -> Any:
    def hook(exc_type: type[BaseException], exc: BaseException, tb: Any) -> None:
        message = own_error_message(exc)
        if message is None:
            previous(exc_type, exc, tb)
            return
        print(f"slowed: error: {message}", file=sys.stderr)
        exit_now(1)

    hook.slowed_guard = True  # type: ignore[attr-defined]
    return hook


def _install_excepthook() -> None:
    # Uncaught (as in `axolotl train`), SLowED's error prints as one line instead of a traceback; callers that
    # catch it (`slowed check`) see the exception as usual.
    if not getattr(sys.excepthook, "slowed_guard", False):
        sys.excepthook = _one_line_excepthook(sys.excepthook)


def _switched_off() -> bool:
    return os.environ.get(ENV_SWITCH, "1").strip().lower() in ("0", "false", "no", "off")


class _OnValidate:
    """pydantic's validate-python event handler for one of Axolotl's config models."""

    def on_enter(self, input: Any, *args: Any, **kwargs: Any) -> None:  # noqa: A002 - pydantic's name
        if _switched_off() or not isinstance(input, Mapping):
            return
        message = problem(input, _loaded_plugins())
        if message is None:
            return
        _install_excepthook()
        raise SLowEDGuardError(message)

    def on_error(self, error: Any) -> None:
        if not _switched_off() and own_error_message(error) is not None:
            _install_excepthook()


class SLowEDGuardPlugin:
    """The pydantic plugin (``pydantic.plugin.PydanticPluginProtocol``)."""

    def new_schema_validator(
        self,
        schema: Any,
        schema_type: Any,
        schema_type_path: Any,
        schema_kind: Any,
        config: Any,
        plugin_settings: Any,
    ) -> tuple[Any, None, None]:
        module = getattr(schema_type_path, "module", "") or ""
        name = getattr(schema_type_path, "name", "") or ""
        if name in WATCHED and module.startswith("axolotl."):
            return _OnValidate(), None, None
        return None, None, None


plugin = SLowEDGuardPlugin()
