"""The per-target losses that answer TRL 1.15+'s fused LM head (``log_probs``, ``entropy``, ``is_top1``,
``label_mask``): both paths against the reference on full logits, fields and gradients. No TRL needed."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from slowed_plugin.core.hidden_states_loss import chunked_masked_token_losses
from slowed_plugin.core.logits_loss import fused_masked_token_losses
from slowed_plugin.core.masking import IGNORE_INDEX, kept_token_count, mask_low_entropy_targets, token_entropy
from slowed_plugin.trainer.reference_loss import masked_causal_lm_loss

VOCAB, HIDDEN = 41, 12


def make_case(batch=3, width=30, seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(batch, width, HIDDEN, generator=g)
    head = nn.Linear(HIDDEN, VOCAB, bias=True)
    with torch.no_grad():
        head.weight.copy_(torch.randn(VOCAB, HIDDEN, generator=g) * 0.7)
        head.bias.copy_(torch.randn(VOCAB, generator=g))
    labels = torch.randint(0, VOCAB, (batch, width), generator=g)
    labels[:, :4] = IGNORE_INDEX  # a prompt
    labels[-1, -5:] = IGNORE_INDEX  # padding
    hidden[0, 8:14] = hidden[0, 7]  # equal entropies: ties broken by position
    return hidden, head, labels


def token_losses(path, hidden, head, labels, ratio, scope, **kwargs):
    if path == "hidden_states":
        return chunked_masked_token_losses(hidden, head, labels, ratio, scope, chunk_size=7, **kwargs)
    return fused_masked_token_losses(head(hidden), labels, ratio, scope, chunk_rows=16, **kwargs)


@pytest.mark.parametrize("path", ["hidden_states", "logits"])
@pytest.mark.parametrize("scope", ["sequence", "batch"])
@pytest.mark.parametrize("packed", [False, True], ids=["rows", "packed"])
def test_fields_and_gradient_are_the_reference_on_masked_labels(kernels, path, scope, packed):
    hidden, head, labels = make_case()
    position_ids = None
    if packed:  # two examples per row, as TRL's padding-free packing lays them out
        position_ids = torch.tensor([list(range(12)) + list(range(18))] * 3)
    ratio = 0.4
    num_items = kept_token_count(labels, ratio, scope, position_ids) + 3  # another micro-batch's kept targets

    h_ref = hidden.clone().requires_grad_(True)
    logits = head(h_ref)
    ref_loss, ref_stats = masked_causal_lm_loss(logits, labels, ratio, scope, num_items, position_ids)
    ref_loss.backward()
    ref_grads = [h_ref.grad, head.weight.grad.clone(), head.bias.grad.clone()]
    head.zero_grad(set_to_none=True)

    h = hidden.clone().requires_grad_(True)
    tokens, stats = token_losses(path, h, head, labels, ratio, scope, position_ids=position_ids)
    # TRL's SFT loss from the fused fields: -log_probs summed, divided by num_items_in_batch.
    (tokens.nll.sum() / num_items).backward()
    torch.testing.assert_close(tokens.nll.sum() / num_items, ref_loss, rtol=1e-5, atol=1e-6)
    for ours, ref in zip([h.grad, head.weight.grad, head.bias.grad], ref_grads, strict=True):
        torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-6)
    assert int(stats.dropped) == int(ref_stats.dropped) and int(stats.dropped) > 0

    # Every field is what TRL's fused head returns on labels whose dropped targets are -100.
    masked, _ = mask_low_entropy_targets(logits.detach(), labels, ratio, scope, position_ids)
    kept = masked != IGNORE_INDEX
    assert torch.equal(tokens.kept, kept)
    scored = logits.detach()[:, :-1]
    log_p = torch.log_softmax(scored, -1).gather(-1, masked.clamp_min(0).unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(tokens.nll, torch.where(kept, -log_p, 0.0), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(tokens.entropy, torch.where(kept, token_entropy(scored), 0.0), rtol=1e-5, atol=1e-6)
    assert torch.equal(tokens.hit, (scored.argmax(-1) == masked) & kept)


@pytest.mark.parametrize("path", ["hidden_states", "logits"])
def test_shift_labels_and_a_micro_batch_that_keeps_nothing(kernels, path):
    hidden, head, labels = make_case(batch=2, width=20, seed=1)
    shifted = F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)
    tokens, _ = token_losses(path, hidden, head, None, 0.3, "sequence", shift_labels=shifted)
    reference, _ = token_losses(path, hidden, head, labels, 0.3, "sequence")
    assert tokens.nll.shape == shifted.shape
    torch.testing.assert_close(tokens.nll[:, :-1], reference.nll)

    h = hidden.clone().requires_grad_(True)
    nothing = torch.full_like(labels, IGNORE_INDEX)
    tokens, _ = token_losses(path, h, head, nothing, 0.3, "sequence")
    assert not tokens.kept.any() and not tokens.nll.any()
    tokens.nll.sum().backward()  # still connected: DDP and FSDP expect every gradient
    assert h.grad is not None and not h.grad.any()
