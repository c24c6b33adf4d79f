"""The per-chunk kernels of both fused losses (:mod:`.logits_loss`, :mod:`.hidden_states_loss`), compiled once.

Per row of logits: ``lse = logsumexp(z)``, the entropy ``H = lse - sum softmax(z) * z`` (float32), the target
logit and whether it is the argmax (:func:`_row_stats`); and the backward ``(softmax(z) - onehot(y)) * w``
written into a gradient buffer in the logits' dtype (:func:`_row_grad_into`). Both take the model's logit scale
and soft-cap, which the hidden-states loss applies itself.

They are plain torch functions run through ``torch.compile`` (C++/OpenMP on CPU, Triton on GPU). If compiling
fails (no C++ compiler, no Triton, an unsupported platform), the same functions run eagerly; the fallback is
chosen automatically on first use and logged once. ``SLOWED_COMPILE=0`` in the environment when the process
imports this module forces the eager kernels; within a process, :meth:`_Kernels.switched` does. Compiling
costs seconds on the first call, so a trainer calls :func:`warmup` before its first step (the compiled code is
also kept by inductor's on-disk cache, so later processes load it instead of compiling again).
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator
from typing import Any

import torch

from ..log import get_logger
from .masking import IGNORE_INDEX

logger = get_logger()


def _row_stats(
    z: torch.Tensor, y: torch.Tensor, scale: float, softcap: float | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per row of ``z`` (rows, V): logsumexp, entropy, target logit (float32) and argmax == target.

    ``scale`` and ``softcap`` are applied first (``softcap * tanh(scale * z / softcap)``), as the
    model would; the chunked path needs them, the logits path passes 1.0 and None.
    """
    x = z.float()
    if scale != 1.0:
        x = x * scale
    if softcap is not None:
        x = softcap * torch.tanh(x / softcap)
    m = x.amax(dim=-1, keepdim=True)
    e = torch.exp(x - m)
    s = e.sum(dim=-1)
    lse = m.squeeze(-1) + torch.log(s)
    entropy = lse - (e * x).sum(dim=-1) / s
    target_logit = x.gather(-1, y.unsqueeze(-1)).squeeze(-1)
    hit = x.argmax(dim=-1) == y
    return lse, entropy, target_logit, hit


def _row_grad_into(
    z: torch.Tensor,
    lse: torch.Tensor,
    y: torch.Tensor,
    w: torch.Tensor,
    out: torch.Tensor,
    scale: float,
    softcap: float | None,
) -> None:
    """``out = d(sum_r w_r * CE_r) / dz`` for the rows of ``z``; rows with ``w == 0`` get 0.

    ``out`` may be ``z`` itself (the chunked path overwrites its recomputed logits).
    """
    x = z.float()
    if scale != 1.0:
        x = x * scale
    if softcap is not None:
        t = torch.tanh(x / softcap)
        x = softcap * t
    p = torch.exp(x - lse.unsqueeze(-1))
    vocab = torch.arange(z.shape[-1], device=z.device)
    weight = w.unsqueeze(-1)
    g = (p - (vocab.unsqueeze(0) == y.unsqueeze(-1)).to(p.dtype)) * weight
    if softcap is not None:
        g = g * (1.0 - t * t)
    if scale != 1.0:
        g = g * scale
    # where, not multiply: a row outside the loss may hold inf/NaN logits and must still get 0.
    out.copy_(torch.where(weight != 0, g, torch.zeros_like(g)))


def compile_requested(environ: Any = os.environ) -> bool:
    """``SLOWED_COMPILE`` (default on; ``0`` asks for the eager kernels)."""
    return environ.get("SLOWED_COMPILE", "1") != "0"


class _Kernels:
    """The two per-chunk kernels, compiled on first use, with an automatic eager fallback.

    ``compile``: whether to try compiling, an explicit switch (``SLOWED_COMPILE`` is read once, when the process
    imports this module, not on every call); ``failed``: why compiling was abandoned, if it was, for the rest of
    the process (a compiler that failed once fails again).
    """

    def __init__(self, compile: bool | None = None) -> None:  # noqa: A002 - the switch's natural name
        self._lock = threading.Lock()
        self._compiled: dict[str, Callable[..., Any]] | None = None
        self.compile = compile_requested() if compile is None else compile
        self.failed: str | None = None

    @property
    def enabled(self) -> bool:
        return self.compile and self.failed is None

    @contextlib.contextmanager
    def switched(self, compile: bool) -> Iterator[None]:  # noqa: A002
        """The compiled (``True``) or the eager kernels (``False``) for the duration, then the previous switch."""
        previous, self.compile = self.compile, compile
        try:
            yield
        finally:
            self.compile = previous

    def _get(self) -> dict[str, Callable[..., Any]]:
        with self._lock:
            if self._compiled is None:
                # dynamic=True: one graph serves every chunk height, vocabulary and scale, so a
                # trailing partial chunk or a new model does not trigger a recompile.
                self._compiled = {
                    "stats": torch.compile(_row_stats, dynamic=True),
                    "grad": torch.compile(_row_grad_into, dynamic=True),
                }
            return self._compiled

    def _call(self, name: str, eager: Callable[..., Any], *args: Any) -> Any:
        z = args[0]
        # Dynamo specialises sizes 0 and 1: a one-row chunk (a trailing partial chunk, at any step)
        # would compile a graph of its own; one row costs nothing eagerly.
        if not self.enabled or z.shape[0] < 2:
            return eager(*args)
        try:
            # One global state for every caller: Dynamo guards on grad mode and autocast, and the
            # kernels run in the forward (under the trainer's autocast), in the backward (grad off,
            # no autocast), in the reference mask and in `warmup`. Neither affects them: they take
            # no gradient and upcast explicitly.
            with torch.no_grad(), torch.autocast(z.device.type, enabled=False):
                return self._get()[name](*args)
        except Exception as err:  # noqa: BLE001 - a compiler failure of any kind means: run eagerly
            # The eager kernel raises too when the inputs themselves are wrong; only a compiler
            # failure switches the process to the eager kernels.
            result = eager(*args)
            self.failed = compile_error_summary(err)
            logger.warning(
                "SLowED: torch.compile is unavailable for the fused loss kernels (%s); using the eager "
                "kernels (same results, slower). Set SLOWED_COMPILE=0 to skip the attempt.",
                self.failed,
            )
            return result

    # Dynamo also guards on requires_grad (the fused path's logits require grad even where grad
    # mode is off) and on strides (the backward's per-row weights can be an expanded scalar, stride
    # 0): the kernels see detached logits (free) and contiguous per-row vectors (one chunk's rows).
    def stats(self, z, y, scale=1.0, softcap=None):
        return self._call("stats", _row_stats, z.detach(), y.contiguous(), float(scale), _softcap(softcap))

    def grad_into(self, z, lse, y, w, out, scale=1.0, softcap=None) -> None:
        # `out is z` (the chunked path overwrites its logits) compiles as a graph of its own: keep it.
        z_, out_ = z.detach(), out.detach()
        if out is z:
            out_ = z_
        rows = (lse.contiguous(), y.contiguous(), w.contiguous())
        self._call("grad", _row_grad_into, z_, *rows, out_, float(scale), _softcap(softcap))


def compile_error_summary(err: BaseException) -> str:
    """One line for a compiler failure: its type, the message's first line and, when the message runs on, its last
    line too. Inductor's messages open with where it failed ("backend='inductor' raised:") and end with why (the
    compiler's own error), so the first line alone hides the cause."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    if not lines:
        return type(err).__name__
    summary = f"{type(err).__name__}: {lines[0]}"
    return summary if len(lines) == 1 else f"{summary} ... {lines[-1]}"


def _softcap(value: float | None) -> float | None:
    return None if value is None or value == 0 else float(value)


KERNELS = _Kernels()


def warmup(
    vocab_size: int,
    dtypes: tuple[torch.dtype, ...] = (torch.float32,),
    device: torch.device | str = "cpu",
    logit_scale: float = 1.0,
    final_logit_softcapping: float | None = None,
    paths: tuple[str, ...] = ("logits", "hidden_states"),
) -> float:
    """Compile (or load from inductor's cache) the graphs the loss will run for these logits, so that
    no training step compiles. Returns the seconds spent; a no-op under eager kernels.

    ``paths``: ``"logits"`` (:func:`~.logits_loss.fused_masked_causal_lm_loss`: the model already applied its scale
    and soft-cap; the backward writes into a separate gradient) and/or ``"hidden_states"``
    (:mod:`~slowed_plugin.core.hidden_states_loss`: ``logit_scale`` and ``final_logit_softcapping``
    applied in the kernels; the backward overwrites the recomputed logits in place, which Dynamo
    compiles as a graph of its own). A training step then finds every graph it needs: the kernels
    always run without grad and autocast (see ``_Kernels._call``), chunk heights and vocabulary sizes
    are dynamic from two rows up, and one-row chunks run eagerly.
    """
    import time

    start = time.perf_counter()
    if not KERNELS.enabled:
        return 0.0
    unknown = set(paths) - {"logits", "hidden_states"}
    if unknown:
        raise ValueError(f"`paths` must name logits and/or hidden_states; got {sorted(unknown)}.")
    settings = []
    if "logits" in paths:
        settings.append((1.0, None, False))
    if "hidden_states" in paths:
        settings.append((logit_scale, final_logit_softcapping, True))
    for dtype in dtypes:
        for scale, softcap, in_place in settings:
            # Three rows: sizes 0 and 1 are specialised by dynamo, anything larger shares one graph.
            z = torch.zeros(3, vocab_size, dtype=dtype, device=device)
            y = torch.zeros(3, dtype=torch.long, device=device)
            w = torch.ones(3, device=device)
            lse = KERNELS.stats(z, y, scale, softcap)[0]
            KERNELS.grad_into(z, lse, y, w, z if in_place else torch.empty_like(z), scale, softcap)
            if not KERNELS.enabled:
                return time.perf_counter() - start
    return time.perf_counter() - start


def check_targets(targets: torch.Tensor, vocab_size: int) -> None:
    bad = (targets != IGNORE_INDEX) & ((targets < 0) | (targets >= vocab_size))
    if bad.any():
        value = int(targets[bad][0])
        raise ValueError(
            f"SLowED: label {value} is outside the vocabulary [0, {vocab_size}); labels must be token ids or -100."
        )


def normalise(total: torch.Tensor, kept_count: torch.Tensor, num_items_in_batch: torch.Tensor | int | None):
    """``total`` divided as ``ForCausalLMLoss`` divides: by the kept count (mean), or by
    ``num_items_in_batch`` clamped to at least 1 (as :func:`slowed_plugin.trainer.reference_loss.masked_causal_lm_loss` clamps it)."""
    if num_items_in_batch is None:
        return total / kept_count
    if torch.is_tensor(num_items_in_batch):
        return total / num_items_in_batch.clamp_min(1).to(total.device)
    return total / max(int(num_items_in_batch), 1)
