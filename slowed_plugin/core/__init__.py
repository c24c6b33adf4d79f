"""Torch-only SLowED math; knows nothing of trainers.

The rule (checked by tests/test_import_graph.py): a core module imports, at module level, only the standard
library, torch, other core modules and the package's pure-Python validation and logger. Another library is imported
only lazily, inside a function, and only to recognise its objects or reach the weights they hold (PEFT's LoRA
layers, DeepSpeed ZeRO's fp32 masters), or, at ``mask_ratio=0``, to hand the logits loss to transformers' own
``ForCausalLMLoss`` (plain SFT, bit for bit): the masking math itself is torch. What computes with transformers or datasets
lives with the trainer (:mod:`slowed_plugin.trainer.reference_loss`, :mod:`slowed_plugin.trainer.reference_dataset`).

- :mod:`.masking`: entropies and the exact low-entropy selection (the reference implementation).
- :mod:`.kernels`: the compiled per-chunk kernels both fused losses share, and their warm-up.
- :mod:`.logits_loss`: the masked loss on logits, fused and chunked.
- :mod:`.hidden_states_loss`: the masked loss from hidden states and the output head, without full logits.
- :mod:`.lm_head`: a causal LM as backbone + linear head (logit scale, soft-cap), for the hidden-states loss.
- :mod:`.slow_tuning`: ΔW norms (``delta_norms``) and the projection onto the ball of radius tau.
- :mod:`.weight_access`: reading and writing weights through DeepSpeed ZeRO's fp32 masters (and FSDP2's DTensors).
- :mod:`.reference_mask`: the mask of the initial model, over a list of examples.
"""

# transformers' ignored label (torch.nn.CrossEntropyLoss ignore_index); kept here so torch-free tools share it.
IGNORE_INDEX = -100
