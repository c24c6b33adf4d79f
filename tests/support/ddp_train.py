"""One SLowED optimizer step under torchrun (or a single process), for tests/test_distributed.py.

Usage: python ddp_train.py MODEL_DIR DATA_JSONL OUT_DIR BATCH_PER_DEVICE [ANCHOR_MODE]
Writes OUT_DIR/rank{N}.pt with the step's gradients, the adapter after projection, and the logs; with
ANCHOR_MODE (replay or gradient) a safety anchor on the bundled prompts runs too, and its rows are saved.
"""

import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
from trl_helpers import GradientCatcher, sft_trainer  # noqa: E402

from slowed_plugin import SLowEDCallback  # noqa: E402


def main() -> None:
    model_dir, data, out, batch = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    mode = sys.argv[5] if len(sys.argv) > 5 else None
    rows = [json.loads(line) for line in open(data)]
    catcher = GradientCatcher()
    anchor = None
    if mode is not None:
        from slowed_plugin.data import cot_tiny_rows

        prompts = [r["prompt"] for r in cot_tiny_rows()[40:46]]
        anchor = {"prompts": prompts, "mode": mode, "ratio": 0.2, "max_new_tokens": 6, "replay_batch_size": 3}
    callback = SLowEDCallback(tau=0.02, mask_ratio=0.3, mask_scope="sequence", safety_anchor=anchor)
    trainer = sft_trainer(
        model_dir,
        rows,
        os.path.join(out, "run"),
        [callback, catcher],
        max_steps=1 if mode is None else 4,  # the anchor's gradient first conflicts at a later step
        per_device_train_batch_size=batch,
        learning_rate=5e-2,
        **({"ddp_backend": "gloo"} if int(os.environ.get("WORLD_SIZE", "1")) > 1 else {}),
    )
    trainer.train()
    rank = int(os.environ.get("RANK", "0"))
    adapter = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora_" in n}
    saved = {"grads": catcher.grads, "adapter": adapter, "logs": trainer.state.log_history}
    if callback.anchor is not None:
        saved["anchor"] = [(r.prompt, r.answer) for r in callback.anchor.rows]
        saved["projected"] = callback.anchor.projected_steps
    torch.save(saved, f"{out}/rank{rank}.pt")


if __name__ == "__main__":
    main()
