"""What the parent process shows while the workers run: one tqdm bar per run on a terminal, one line per epoch
and run otherwise (CI logs); the base-model build's bar.

Workers post ``(index, kind, ...)`` messages (see :class:`~slowed_plugin.demo.epoch_eval.DemoCallback`); the
base-model build posts under :data:`BASE_INDEX`.
"""

from __future__ import annotations

import sys
from typing import Any

from .methods import RunSpec

# Progress-message index of the base-model build (runs count from 0).
BASE_INDEX = -1


class RunProgress:
    """One tqdm bar per run on a terminal; one line per epoch and run otherwise (CI logs)."""

    def __init__(self, specs: list[RunSpec], epochs: int, enabled: bool) -> None:
        self.specs, self.epochs, self.enabled = specs, epochs, enabled
        self.tty = enabled and sys.stderr.isatty()
        self.bars: dict[int, Any] = {}
        if self.tty:
            from tqdm.auto import tqdm

            width = max(len(s.label) for s in specs)
            for position, spec in enumerate(specs):
                self.bars[spec.index] = tqdm(
                    total=None, desc=spec.label.ljust(width), position=position, unit="step", leave=True
                )

    def handle(self, message: tuple) -> None:
        index, kind, *rest = message
        spec = next(s for s in self.specs if s.index == index)
        bar = self.bars.get(index)
        if kind == "start" and bar is not None:
            bar.reset(total=rest[0])
        elif kind == "step" and bar is not None:
            bar.n = rest[0]
            bar.refresh() if rest[0] % 10 == 0 else None
        elif kind == "eval":
            epoch, safety, reasoning = rest
            text = (
                f"epoch {epoch:.0f}/{self.epochs} safety {safety:.2f} reasoning {reasoning['reasoning_accuracy']:.2f}"
            )
            if bar is not None:
                bar.set_postfix_str(text)
            elif self.enabled:
                print(f"  {spec.label}: {text}", file=sys.stderr, flush=True)

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()


class BaseProgress:
    """The base-model build's bar on a terminal (nothing otherwise: the CLI prints start and end)."""

    def __init__(self, enabled: bool) -> None:
        self.tty = enabled and sys.stderr.isatty()
        self.bar = None

    def handle(self, message: tuple) -> None:
        _, kind, value = message
        if not self.tty:
            return
        if kind == "start":
            from tqdm.auto import tqdm

            self.bar = tqdm(total=value, desc="  aligned base model (built once, then cached)", unit="step")
        elif kind == "step" and self.bar is not None:
            self.bar.update(value - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
