"""Torch-only SLowED math; knows nothing of trainers.

- :mod:`.masking`: entropies and the exact low-entropy selection (the reference implementation).
- :mod:`.kernels`: the compiled per-chunk kernels both fused losses share, and their warm-up.
- :mod:`.logits_loss`: the masked loss on logits, fused and chunked.
- :mod:`.hidden_states_loss`: the masked loss from hidden states and the output head, without full logits.
- :mod:`.lm_head`: a causal LM as backbone + linear head (logit scale, soft-cap), for the hidden-states loss.
- :mod:`.slow_tuning`: ΔW norms (``delta_norms``) and the projection onto the ball of radius tau.
- :mod:`.zero`: reading and writing weights through DeepSpeed ZeRO's fp32 masters (and FSDP2's DTensors).
- :mod:`.reference_mask`: the mask of the initial model, written into a dataset's labels.
"""

# transformers' ignored label (torch.nn.CrossEntropyLoss ignore_index); kept here so torch-free tools share it.
IGNORE_INDEX = -100
