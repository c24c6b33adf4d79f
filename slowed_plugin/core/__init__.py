"""Torch-only SLowED math; knows nothing of trainers.

- :mod:`.masking`: entropies and the exact low-entropy selection (the reference implementation).
- :mod:`.logits_loss`: the masked loss on logits, fused and chunked, with compiled kernels.
- :mod:`.hidden_states_loss`: the masked loss from hidden states and the output head, without full logits.
- :mod:`.slow_tuning`: ΔW norms (``delta_norms``) and the projection onto the ball of radius tau.
- :mod:`.reference_mask`: the mask of the initial model, written into a dataset's labels.
"""

# transformers' ignored label (torch.nn.CrossEntropyLoss ignore_index); kept here so torch-free tools share it.
IGNORE_INDEX = -100
