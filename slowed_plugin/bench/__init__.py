"""Measuring SLowED against the stock paths, shared by ``slowed doctor --bench`` and ``benchmarks/``.

- :mod:`.process`: a measurement in a fresh process (its environment, its ``RESULT`` line), its memory (RSS and
  its high-water mark) and the machine's CPU name.
- :mod:`.step_pairs`: stock TRL ``SFTTrainer`` against the same trainer + ``SLowEDCallback``, one step at a time
  in forks taking turns; the model shapes and the variants both callers measure.
- :mod:`.qlora`: a 4-bit NF4 base with LoRA and one SLowED step on it (the doctor's 4-bit check, benchmark (f)).
"""
