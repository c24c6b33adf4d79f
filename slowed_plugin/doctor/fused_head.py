"""Masking under TRL 1.15+'s fused LM head, on the device: SLowED's answer against TRL's own fused head.

TRL 1.15+'s ``SFTTrainer`` scores tokens with ``add_fused_lm_head`` (a Triton kernel on CUDA, torch tiles on CPU)
and SLowED answers its ``fused_lm_head=True`` calls with the masked per-token fields (docs/trl.md). The reference
is TRL's fused head itself, run on the labels with SLowED's dropped targets set to -100: per-token log-probs,
the kept-token mask, the loss and every gradient must agree (``tests/trainer/test_fused_head.py`` on CPU).
"""

from __future__ import annotations

import torch

from ..core import IGNORE_INDEX
from .findings import Finding
from .kernels import MASK_RATIO, tolerance_error

CHECK = "kernels.fused_lm_head.fp32"
BATCH, WIDTH, HIDDEN, VOCAB = 3, 48, 64, 4099
# Those of tests/trainer/test_fused_head.py: fp32 end to end on both sides.
LOSS_TOL, GRAD_TOL = {"rtol": 1e-5, "atol": 1e-6}, {"rtol": 1e-4, "atol": 1e-6}


def _inputs(device: str) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(4, VOCAB, (BATCH, WIDTH), generator=generator)
    labels = input_ids.clone()
    labels[:, :5] = IGNORE_INDEX  # a prompt
    labels[0, -7:] = IGNORE_INDEX  # a padded row
    return input_ids.to(device), labels.to(device)


def compare(device: str) -> dict:
    """The worst tolerance ratios (at most 1 passes) of SLowED's fused answer against TRL's fused head."""
    from trl.trainer.utils import add_fused_lm_head

    from ..config import SLowEDConfig
    from ..core.masking import mask_low_entropy_targets
    from ..tiny import build_model
    from ..trainer.loss import MaskedCausalLMLoss
    from ..trainer.patches import Patches, install_masked_forward, redirect_fused_lm_head

    model = build_model("llama", VOCAB, hidden=HIDDEN, layers=2, seed=0).to(device=device, dtype=torch.float32)
    model.train()
    config = SLowEDConfig.from_value({"tau": None, "mask_ratio": MASK_RATIO})
    masked_loss = MaskedCausalLMLoss(config, model, None, lambda stats: None, lambda: 1)
    patches = Patches()
    try:  # as SFTTrainer and SLowEDCallback leave the model: SLowED's forward, TRL's head, SLowED on top
        install_masked_forward(patches, model, masked_loss)
        add_fused_lm_head(model, outputs=("log_probs",))
        redirect_fused_lm_head(patches, model, masked_loss)
        input_ids, labels = _inputs(device)
        ours = model(input_ids=input_ids, labels=labels, fused_lm_head=True)
        ours_loss = -ours.log_probs.sum() / ours.label_mask.sum()
        ours_loss.backward()
        ours_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
        model.zero_grad(set_to_none=True)
    finally:
        patches.undo()  # TRL's fused head alone again
    with torch.no_grad():
        logits = model(input_ids=input_ids).logits
    masked, _ = mask_low_entropy_targets(logits, labels, MASK_RATIO, config.mask_scope)
    trl = model(
        input_ids=input_ids, labels=torch.nn.functional.pad(masked, (1, 0), value=IGNORE_INDEX), fused_lm_head=True
    )
    trl_loss = -trl.log_probs.sum() / trl.label_mask.sum()
    trl_loss.backward()
    kept, candidates = int(trl.label_mask.sum()), int((labels[:, 1:] != IGNORE_INDEX).sum())
    return {
        "mask_equal": bool(torch.equal(ours.label_mask.bool(), trl.label_mask.bool())) and 0 < kept < candidates,
        "kept": kept,
        "candidates": candidates,
        "log_probs": tolerance_error(ours.log_probs * trl.label_mask, trl.log_probs * trl.label_mask, **LOSS_TOL),
        "loss": tolerance_error(ours_loss, trl_loss, **LOSS_TOL),
        "grad": max(tolerance_error(ours_grads[n], p.grad, **GRAD_TOL) for n, p in model.named_parameters()),
    }


def fused_head_findings(device: str) -> list[Finding]:
    """One finding: ok, FAIL, or skip where the installed TRL has no fused LM head."""
    from ..trainer.private_api import FUSED_LM_HEAD_TRL, fused_lm_head_trl

    try:
        has_head = fused_lm_head_trl()
    except ImportError:  # packaging missing: nothing of TRL's to check either
        has_head = False
    if not has_head:
        return [Finding(CHECK, "skip", f"TRL {FUSED_LM_HEAD_TRL}+ not installed: no fused LM head to mask through")]
    try:
        result = compare(device)
    except Exception as err:  # noqa: BLE001 - a crash of the product's path is a finding, not a doctor crash
        return [Finding(CHECK, "FAIL", f"raised {type(err).__name__}: {err}")]
    worst = max(result["log_probs"], result["loss"], result["grad"])
    ok = result["mask_equal"] and worst <= 1
    message = (
        f"SLowED's masked answer vs TRL's fused head ({'Triton' if device == 'cuda' else 'torch'}) on the masked "
        f"labels: mask {'equal' if result['mask_equal'] else 'DIFFERS'} ({result['kept']} of "
        f"{result['candidates']} targets kept), worst error/tolerance log-probs {result['log_probs']:.2f}, "
        f"loss {result['loss']:.2f}, gradients {result['grad']:.2f}"
    )
    return [Finding(CHECK, "ok" if ok else "FAIL", message, result)]
