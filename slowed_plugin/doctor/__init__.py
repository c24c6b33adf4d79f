"""``slowed doctor``: what works on this machine, one line per finding (CPU or CUDA, no downloads).

- :mod:`.findings`: the finding (ok / warn / FAIL / skip), its line, the exit code and the JSON report.
- :mod:`.environment`: Python, torch, the device (CUDA, bf16 support) and the dependencies' versions.
- :mod:`.kernels`: both fused loss paths against the reference, eager and compiled, fp32 and bf16.
- :mod:`.quantized`: a 4-bit NF4 base with LoRA under SLowED (bitsandbytes and a CUDA GPU).
- :mod:`.bench`: ``--bench``, on top of :mod:`slowed_plugin.bench.step_pairs` (stock TRL ``SFTTrainer`` against the
  same + ``SLowEDCallback``, step by step in forks, shared with ``benchmarks/``).
- :mod:`.cli`: the sub-command.
"""
