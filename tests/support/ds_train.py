"""A few SLowED optimizer steps of TRL's SFTTrainer under DeepSpeed ZeRO on CPU (torchrun, gloo), or the same run
in one process without DeepSpeed, for tests/trainer/test_deepspeed.py.

Usage: python ds_train.py MODEL_DIR DATA_JSONL OUT_DIR BATCH_PER_DEVICE STAGE [--mode lora|full|plain]
       [--steps N] [--save-steps N] [--resume CHECKPOINT] [--optim NAME --lr LR]
STAGE 0 means no DeepSpeed (the one-process reference run). `--mode full` trains every weight (no PEFT),
`plain` trains LoRA without SLowED (stock TRL). `--save-steps` writes a checkpoint every N steps (the
DeepSpeed engine's own checkpoint beside the model); `--resume` continues from one. Writes OUT_DIR/rank{N}.pt.

The launch quirks here are CPU-only and belong to the test, not to slowed-plugin: `use_cpu=True` (otherwise
accelerate finds no backend and counts one process), `deepspeed.init_distributed("gloo")` before
`from_pretrained` (otherwise ZeRO-3's `zero.Init` counts one process), and a final barrier +
`destroy_process_group()` (otherwise one ZeRO-3 rank aborts at exit).
"""

import argparse
import json
import os
import sys

import torch

TAU = 0.05  # binds at every step at this learning rate, for LoRA and full fine-tuning alike
LR = 0.5


def _config(stage: int) -> dict:
    zero: dict = {"stage": stage}
    if stage == 3:
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    return {
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": "auto",
        "train_batch_size": "auto",
        "gradient_clipping": "auto",
        "zero_optimization": zero,
        # The trainer's own SGD (exact gradients in the step: W1 = W0 - lr * g) is not on ZeRO's tested list.
        "zero_allow_untested_optimizer": True,
    }


def _lora_pairs(model):
    from peft.tuners.lora import LoraLayer

    for name, module in model.named_modules():
        if isinstance(module, LoraLayer) and "default" in module.lora_A:
            yield name, module.lora_A["default"].weight, module.lora_B["default"].weight, module.scaling["default"]


def _trainable(model) -> list[tuple[str, torch.Tensor]]:
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def _masters(params, zero: bool) -> list[torch.Tensor]:
    """Full fp32 master values under ZeRO (collective), the tensors themselves otherwise."""
    if not zero:
        return [p.detach().float().clone() for p in params]
    from deepspeed.utils import safe_get_full_fp32_param

    return [safe_get_full_fp32_param(p).clone() for p in params]


def _module_copies(params, stage: int) -> list[torch.Tensor]:
    """What the next forward and save_model see: the module's tensors (gathered under ZeRO-3)."""
    params = list(params)
    if stage == 3:
        from deepspeed.runtime.zero import GatheredParameters

        with GatheredParameters(params, modifier_rank=None):
            return [p.detach().float().clone() for p in params]
    return [p.detach().float().clone() for p in params]


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("model_dir")
    parser.add_argument("data")
    parser.add_argument("out")
    parser.add_argument("batch", type=int)
    parser.add_argument("stage", type=int)
    parser.add_argument("--mode", choices=("lora", "full", "plain"), default="lora")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--save-steps", type=int, default=0)
    parser.add_argument("--resume", default=None)
    parser.add_argument("--optim", default="sgd")  # sgd: the first step is exactly -lr * gradient
    parser.add_argument("--lr", type=float, default=LR)
    return parser.parse_args()


def main() -> None:
    cli = _arguments()
    sys.path.insert(0, os.path.dirname(__file__))  # trl_helpers
    stage, out, mode = cli.stage, cli.out, cli.mode
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTTrainer
    from trl_helpers import sft_config

    from slowed_plugin import SLowEDCallback

    rank = int(os.environ.get("RANK", "0"))
    settings = dict(
        max_steps=cli.steps,
        per_device_train_batch_size=cli.batch,
        learning_rate=cli.lr,
        lr_scheduler_type="constant",
        optim=cli.optim,
        weight_decay=0.0,
    )
    if cli.save_steps:
        settings.update(save_strategy="steps", save_steps=cli.save_steps)
    if stage:
        import deepspeed

        deepspeed.init_distributed(dist_backend="gloo")
        settings["deepspeed"] = _config(stage)
    args = sft_config(os.path.join(out, "run"), **settings)
    _ = args.device  # sets up the process group the way accelerate expects before the model is built
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(cli.model_dir, dtype=torch.float32)  # ZeRO-3: under zero.Init
    peft_config = None if mode == "full" else LoraConfig(r=4, lora_alpha=8, target_modules="all-linear")
    # Full fine-tuning's start, to measure ||W - W0|| against (gathered from the zero.Init partitions under ZeRO-3).
    names, params = zip(*_trainable(model), strict=True)
    start = dict(zip(names, _module_copies(params, stage), strict=True))

    record: dict = {"pre": [], "post": []}

    def delta_norms(model) -> dict:
        """After a projection: every weight's materialised ||ΔW||_F, from the fp32 masters and the module copies."""
        if mode == "full":
            names, params = zip(*_trainable(model), strict=True)
            masters, copies = _masters(params, bool(stage)), _module_copies(params, stage)
            master = [float(torch.linalg.vector_norm(m - start[n])) for n, m in zip(names, masters, strict=True)]
            module = [float(torch.linalg.vector_norm(c - start[n])) for n, c in zip(names, copies, strict=True)]
        else:
            pairs = list(_lora_pairs(model))
            scaling = [s for _, _, _, s in pairs]
            a_m = _masters([a for _, a, _, _ in pairs], bool(stage))
            b_m = _masters([b for _, _, b, _ in pairs], bool(stage))
            a_c = _module_copies([a for _, a, _, _ in pairs], stage)
            b_c = _module_copies([b for _, _, b, _ in pairs], stage)
            masters, copies = a_m + b_m, a_c + b_c
            master = [float(torch.linalg.matrix_norm(s * b @ a)) for s, a, b in zip(scaling, a_m, b_m, strict=True)]
            module = [float(torch.linalg.matrix_norm(s * b @ a)) for s, a, b in zip(scaling, a_c, b_c, strict=True)]
        gap = max(float((m - c).abs().max()) for m, c in zip(masters, copies, strict=True))
        return {"master": master, "module": module, "master_vs_module": gap}

    def updated(model) -> list[torch.Tensor]:
        # LoRA: lora_B (from lora_B = 0, SGD's first step is exactly -lr * gradient); full FT: every weight.
        params = [p for _, p in _trainable(model)] if mode == "full" else [b for _, _, b, _ in _lora_pairs(model)]
        return _masters(params, bool(stage))

    class Pre(TrainerCallback):  # runs before SLowED's on_step_end: the weights the optimizer step wrote
        def on_step_end(self, args, state, control, **kwargs):
            record["pre"].append(updated(trainer.model))

    class Post(TrainerCallback):  # runs after SLowED's on_step_end: the projected weights
        def on_step_end(self, args, state, control, **kwargs):
            record["post"].append({"step": state.global_step, **delta_norms(trainer.model)})

    rows = [json.loads(line) for line in open(cli.data)]
    slowed = SLowEDCallback(tau=TAU, mask_ratio=0.3, mask_scope="sequence", project_every=1)
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=AutoTokenizer.from_pretrained(cli.model_dir),
        peft_config=peft_config,
        callbacks=[] if mode == "plain" else [Pre(), slowed, Post()],
    )
    trainer.train(resume_from_checkpoint=cli.resume)
    record["engine"] = type(trainer.model_wrapped).__name__
    record["world_size"] = trainer.args.world_size
    record["logs"] = trainer.state.log_history
    if mode == "full":
        names = [n for n, _ in _trainable(trainer.model)]
        values = _module_copies([p for _, p in _trainable(trainer.model)], stage)
    else:
        pairs = list(_lora_pairs(trainer.model))
        names = [f"{n}.lora_A" for n, _, _, _ in pairs] + [f"{n}.lora_B" for n, _, _, _ in pairs]
        values = _module_copies([a for _, a, _, _ in pairs] + [b for _, _, b, _ in pairs], stage)
    record["weights"] = dict(zip(names, values, strict=True))
    trainer.save_model(os.path.join(out, "saved"))
    os.makedirs(out, exist_ok=True)
    torch.save(record, os.path.join(out, f"rank{rank}.pt"))
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
