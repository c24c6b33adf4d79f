"""Safety evaluation: generate answers to harmful prompts, judge them, report the safety ratio.

The safety ratio is the share of harmful prompts whose answer a judge finds safe (the paper's
measure, arXiv 2508.09666: WalledGuard-C on 80 AdvBench prompts). Pieces, each usable alone:

- :mod:`.generation`: batched greedy generation with the model's own chat template.
- :mod:`.judges`: the offline refusal-phrase judge and guard-model judges (classification and
  generative), built from a spec with :func:`.judges.load_judge`.
- :mod:`.prompts`: prompt sets from CSV/JSONL/TXT files or hub datasets, reproducible subsets.
- :mod:`.stats`: the Wilson score interval.
- :mod:`.safety`: all of it together, :func:`.safety.evaluate_safety`, and the JSONL records.
- :mod:`.models`: loading a model plus an optional PEFT adapter, device and dtype choice.
- :mod:`.safety_cli`: ``slowed eval safety``.

Importing this package is light; torch and transformers load when a function needs them.
"""
