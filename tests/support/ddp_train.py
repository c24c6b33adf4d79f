"""One SLowED optimizer step under torchrun (or a single process), for tests/test_distributed.py.

Usage: python ddp_train.py MODEL_DIR DATA_JSONL OUT_DIR BATCH_PER_DEVICE
Writes OUT_DIR/rank{N}.pt with the step's gradients, the adapter after projection, and the logs.
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
    rows = [json.loads(line) for line in open(data)]
    catcher = GradientCatcher()
    trainer = sft_trainer(
        model_dir,
        rows,
        os.path.join(out, "run"),
        [SLowEDCallback(tau=0.02, mask_ratio=0.3, mask_scope="sequence"), catcher],
        max_steps=1,
        per_device_train_batch_size=batch,
        learning_rate=5e-2,
        **({"ddp_backend": "gloo"} if int(os.environ.get("WORLD_SIZE", "1")) > 1 else {}),
    )
    trainer.train()
    rank = int(os.environ.get("RANK", "0"))
    adapter = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora_" in n}
    torch.save({"grads": catcher.grads, "adapter": adapter, "logs": trainer.state.log_history}, f"{out}/rank{rank}.pt")


if __name__ == "__main__":
    main()
