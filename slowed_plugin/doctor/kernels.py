"""Both fused loss paths against the reference implementation, on the device: loss, gradients and the mask.

The reference is :func:`slowed_plugin.trainer.reference_loss.masked_causal_lm_loss` (transformers' ``ForCausalLMLoss``
on the full logits, after the exact low-entropy selection), the same one ``tests/core`` compares with. The
paths are the product's: :func:`~slowed_plugin.core.logits_loss.fused_masked_causal_lm_loss` (on logits) and
:func:`~slowed_plugin.core.hidden_states_loss.chunked_masked_causal_lm_loss` (from hidden states and the head),
each with its kernels eager (``SLOWED_COMPILE=0``) and compiled (``torch.compile``: Triton on CUDA, C++ on CPU),
in float32 and bfloat16. A comparison passes when every element satisfies ``|ours - ref| <= atol + rtol * |ref|``
(``torch.testing.assert_close``'s rule); the line gives the worst ``|ours - ref| / (atol + rtol * |ref|)``.
"""

from __future__ import annotations

import contextlib
import time

import torch
from torch import nn

from ..core import IGNORE_INDEX
from ..core.hidden_states_loss import chunked_masked_causal_lm_loss
from ..core.kernels import KERNELS, compile_error_summary, warmup
from ..core.logits_loss import fused_masked_causal_lm_loss
from ..trainer.reference_loss import masked_causal_lm_loss
from .findings import Finding

MASK_RATIO = 0.2
BATCH, WIDTH, HIDDEN = 2, 64, 64
VOCAB = 4099  # not a power of two: the kernels' tail blocks are exercised
LOGITS_CHUNK, HIDDEN_CHUNK = 32, 48  # several chunks per batch, the last one partial
# path -> dtype -> (loss tolerance, gradient tolerance): those of tests/core/test_logits_loss.py and
# tests/core/test_hidden_states_loss.py. bf16 from hidden states: chunked bf16 matmuls and chunk-by-chunk
# bf16 gradient accumulation differ from one full matmul by more than rounding of the loss alone.
TOLERANCES = {
    "logits": {
        torch.float32: ({"rtol": 1e-5, "atol": 1e-6}, {"rtol": 1e-4, "atol": 1e-7}),
        torch.bfloat16: ({"rtol": 1e-5, "atol": 1e-5}, {"rtol": 1.6e-2, "atol": 1e-5}),
    },
    "hidden_states": {
        torch.float32: ({"rtol": 1e-5, "atol": 1e-6}, {"rtol": 1e-4, "atol": 1e-6}),
        torch.bfloat16: ({"rtol": 1e-3, "atol": 1e-3}, {"rtol": 3e-2, "atol": 2e-3}),
    },
}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def tolerance_error(ours: torch.Tensor, ref: torch.Tensor, rtol: float, atol: float) -> float:
    """The worst ``|ours - ref| / (atol + rtol * |ref|)``: at most 1 passes; NaN or a shape mismatch is inf."""
    if ours.shape != ref.shape:
        return float("inf")
    a, b = ours.detach().double(), ref.detach().double()
    ratio = (a - b).abs() / (atol + rtol * b.abs())
    if not torch.isfinite(ratio).all():
        return float("inf")
    return float(ratio.max()) if ratio.numel() else 0.0


def eager_kernels() -> contextlib.AbstractContextManager[None]:
    """The kernels' eager fallback for the duration (the kernels' own switch, not the environment)."""
    return KERNELS.switched(compile=False)


def _labels(generator: torch.Generator) -> torch.Tensor:
    """Targets with a prompt (first quarter ignored) and a padded second half of the last row."""
    labels = torch.randint(0, VOCAB, (BATCH, WIDTH), generator=generator)
    labels[:, : WIDTH // 4] = IGNORE_INDEX
    labels[-1, WIDTH // 2 :] = IGNORE_INDEX
    return labels


def _logits_case(dtype: torch.dtype, device: str) -> tuple[list, list]:
    """(reference, ours) as (loss, [gradients], stats) from the same logits."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(BATCH, WIDTH, VOCAB, generator=g) * 3
    logits[0, 20:26] = logits[0, 19]  # equal entropies: ties broken by position
    logits, labels = logits.to(device, dtype), _labels(g).to(device)
    out = []
    for fused in (False, True):
        z = logits.clone().requires_grad_(True)
        if fused:
            loss, stats = fused_masked_causal_lm_loss(z, labels, MASK_RATIO, "sequence", chunk_rows=LOGITS_CHUNK)
        else:
            loss, stats = masked_causal_lm_loss(z, labels, MASK_RATIO, "sequence")
        loss.backward()
        out.append((loss.detach(), [z.grad], stats))
    return out[0], out[1]


def _hidden_states_case(dtype: torch.dtype, device: str) -> tuple[list, list]:
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(BATCH, WIDTH, HIDDEN, generator=g)
    head = nn.Linear(HIDDEN, VOCAB)
    with torch.no_grad():
        head.weight.copy_(torch.randn(VOCAB, HIDDEN, generator=g) * 0.3)
        head.bias.copy_(torch.randn(VOCAB, generator=g))
    labels = _labels(g).to(device)
    hidden, head = hidden.to(device, dtype), head.to(device, dtype)
    out = []
    for fused in (False, True):
        h = hidden.clone().requires_grad_(True)
        head.zero_grad(set_to_none=True)
        if fused:
            loss, stats, _ = chunked_masked_causal_lm_loss(
                h, head, labels, MASK_RATIO, "sequence", chunk_size=HIDDEN_CHUNK
            )
        else:
            loss, stats = masked_causal_lm_loss(head(h), labels, MASK_RATIO, "sequence")
        loss.backward()
        out.append((loss.detach(), [h.grad, head.weight.grad, head.bias.grad], stats))
    return out[0], out[1]


CASES = {"logits": _logits_case, "hidden_states": _hidden_states_case}


def compare(path: str, dtype: torch.dtype, device: str) -> dict:
    """Run ``path`` and the reference on one case: the worst error/tolerance of the loss and of the gradients,
    and whether both selected the same mask."""
    (loss_r, grads_r, stats_r), (loss_o, grads_o, stats_o) = CASES[path](dtype, device)
    loss_tol, grad_tol = TOLERANCES[path][dtype]
    grad_err = max(
        (tolerance_error(o, r, **grad_tol) if o is not None and r is not None else float("inf"))
        for o, r in zip(grads_o, grads_r, strict=True)
    )
    same_mask = (
        stats_o is not None
        and stats_r is not None
        and int(stats_o.candidates) == int(stats_r.candidates)
        and int(stats_o.dropped) == int(stats_r.dropped)
    )
    return {
        "loss": float(loss_o),
        "loss_ref": float(loss_r),
        "loss_err": tolerance_error(loss_o.float(), loss_r.float(), **loss_tol),
        "grad_err": grad_err,
        "same_mask": same_mask,
        "loss_tol": loss_tol,
        "grad_tol": grad_tol,
    }


def _finding(path: str, mode: str, dtype_name: str, result: dict) -> Finding:
    ok = result["loss_err"] <= 1 and result["grad_err"] <= 1 and result["same_mask"]
    lt, gt = result["loss_tol"], result["grad_tol"]
    message = (
        f"loss {result['loss']:.6f} vs reference {result['loss_ref']:.6f}, error/tol {result['loss_err']:.2g} "
        f"(rtol {lt['rtol']:g}, atol {lt['atol']:g}); gradients error/tol {result['grad_err']:.2g} "
        f"(rtol {gt['rtol']:g}, atol {gt['atol']:g}); mask {'same' if result['same_mask'] else 'DIFFERENT'}"
    )
    return Finding(f"kernels.{path}.{mode}.{dtype_name}", "ok" if ok else "FAIL", message, result)


def _run(path: str, mode: str, dtype_name: str, device: str) -> Finding:
    try:
        return _finding(path, mode, dtype_name, compare(path, DTYPES[dtype_name], device))
    except Exception as err:  # noqa: BLE001 - a crash of the product's loss is a finding, not a doctor crash
        return Finding(f"kernels.{path}.{mode}.{dtype_name}", "FAIL", f"raised {type(err).__name__}: {err}")


def kernel_findings(device: str, dtypes: tuple[str, ...] = ("fp32", "bf16")) -> list[Finding]:
    """Eager first (the fallback must be right too), then the compile with its time, then compiled."""
    found = []
    for path in CASES:
        with eager_kernels():
            found += [_run(path, "eager", name, device) for name in dtypes]
    if not KERNELS.compile:
        found.append(
            Finding("kernels.compile", "warn", "SLOWED_COMPILE=0 is set: the compiled kernels were not checked")
        )
        return found
    start = time.perf_counter()
    try:
        warmup(VOCAB, tuple(DTYPES[name] for name in dtypes), device=device)
    except Exception as err:  # noqa: BLE001
        KERNELS.failed = KERNELS.failed or compile_error_summary(err)  # one line, as the kernels say it
    seconds = time.perf_counter() - start
    compiled = [_run(path, "compiled", name, device) for path in CASES for name in dtypes]
    if KERNELS.failed is not None:
        found.append(
            Finding(
                "kernels.compile",
                "warn",
                f"COMPILE FAILED ({KERNELS.failed}); the EAGER FALLBACK ran instead: same results, slower, and "
                "about 20 more bytes per chunk element of float32 temporaries",
                {"compiled": False, "error": KERNELS.failed, "seconds": seconds},
            )
        )
    else:
        backend = "Triton" if device == "cuda" else "C++/OpenMP"
        found.append(
            Finding(
                "kernels.compile",
                "ok",
                f"compiled with torch.compile ({backend}) in {seconds:.1f} s (compile, or load from inductor's "
                "on-disk cache)",
                {"compiled": True, "seconds": seconds},
            )
        )
    return found + compiled
