"""``slowed quickstart``: a short SLowED run of a tiny local model on the bundled chain-of-thought set.

It shows the TRL front end exactly as the README tells users to register it, on CPU, with no
downloads: a stock ``SFTTrainer`` with ``callbacks=[SLowEDCallback(...)]``, and the SLowED
metrics as the trainer logs them.
"""

from __future__ import annotations

import argparse
import os
import tempfile


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tau", type=float, default=0.5, help="Slow Tuning radius (default 0.5).")
    parser.add_argument("--mask-ratio", type=float, default=0.2, help="Low-Entropy Masking ratio (default 0.2).")
    parser.add_argument("--epochs", type=int, default=2, help="Training epochs (default 2).")
    parser.add_argument("--family", choices=("llama", "qwen2", "bloom"), default="llama", help="Tiny model family.")
    parser.add_argument("--out", default=None, help="Output folder (default: a temporary folder).")


def run(args: argparse.Namespace) -> int:
    from slowed_plugin.config import SLowEDConfig

    config = SLowEDConfig(tau=args.tau, mask_ratio=args.mask_ratio)  # bad values fail here, before any import

    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    from slowed_plugin import SLowEDCallback
    from slowed_plugin.data import cot_tiny_rows
    from slowed_plugin.tiny import build_model, build_tokenizer, vocab_size

    rows = cot_tiny_rows()
    out = args.out or tempfile.mkdtemp(prefix="slowed-quickstart-")
    model_dir = os.path.join(out, "tiny-model")
    torch.manual_seed(0)
    tokenizer = build_tokenizer([r["prompt"] + " " + r["completion"] for r in rows], model_dir)
    build_model(args.family, vocab_size(tokenizer), model_dir, hidden=64)

    callback = SLowEDCallback(config, announce_start=False)
    trainer = SFTTrainer(
        model=model_dir,
        args=SFTConfig(
            output_dir=os.path.join(out, "run"),
            num_train_epochs=args.epochs,
            per_device_train_batch_size=8,
            learning_rate=5e-3,
            logging_steps=6,
            save_strategy="no",
            report_to=[],
            use_cpu=True,
            bf16=False,
            seed=0,
        ),
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        peft_config=LoraConfig(r=8, lora_alpha=16, target_modules="all-linear"),
        callbacks=[callback],
    )
    print(config.describe())  # on stdout, before the trainer's own output; the callback then stays quiet about it
    trainer.train()
    trainer.save_model(os.path.join(out, "adapter"))

    print("\nSLowED metrics as the trainer logged them:")
    print(f"{'step':>5} {'loss':>7} {'masked':>7} {'H_thr':>7} {'max|dW|':>8} {'proj':>5} {'scale':>6}")
    for entry in trainer.state.log_history:
        if "loss" not in entry and "slowed/layers_projected" not in entry:
            continue

        def cell(key: str, fmt: str, entry: dict = entry) -> str:
            return format(entry[key], fmt) if key in entry else "-"

        print(
            f"{entry['step']:>5} {cell('loss', '7.3f'):>7} {cell('slowed/masked_fraction', '7.3f'):>7} "
            f"{cell('slowed/entropy_threshold', '7.3f'):>7} {cell('slowed/max_delta_norm', '8.3f'):>8} "
            f"{cell('slowed/layers_projected', '5.0f'):>5} {cell('slowed/min_scale', '6.3f'):>6}"
        )
    print(f"\nAdapter saved to {os.path.join(out, 'adapter')} (every layer's ||ΔW||_F <= {config.tau}).")
    return 0
