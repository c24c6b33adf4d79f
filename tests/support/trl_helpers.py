"""Building a real TRL SFTTrainer on a tiny local model, for the front-end tests."""

from __future__ import annotations

import torch
from datasets import Dataset


def sft_config(output_dir, **overrides):
    """The suite's ``SFTConfig``: CPU, fp32, seeded, no saving or reporting, logging every step."""
    from trl import SFTConfig

    settings = dict(
        output_dir=str(output_dir),
        max_steps=4,
        per_device_train_batch_size=4,
        learning_rate=5e-3,
        logging_steps=1,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        bf16=False,
        seed=0,
        data_seed=0,
        max_grad_norm=0.0,
        dataloader_num_workers=0,
    )
    settings.update(overrides)
    return SFTConfig(**settings)


def sft_trainer(model_dir, rows, output_dir, callbacks=(), peft=True, model=None, **overrides):
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTTrainer

    args = sft_config(output_dir, **overrides)
    torch.manual_seed(0)
    if model is None:
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    peft_config = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear") if peft is True else (peft or None)
    return SFTTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(list(rows)),
        processing_class=AutoTokenizer.from_pretrained(model_dir),
        peft_config=peft_config,
        callbacks=list(callbacks),
    )


def trainable_state(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


class GradientCatcher:
    """A TrainerCallback that keeps the accumulated gradients of the first optimizer step."""

    def __new__(cls):
        from transformers import TrainerCallback

        class _Catcher(TrainerCallback):
            grads: dict[str, torch.Tensor] | None = None

            def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
                if self.grads is None:
                    self.grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}

        return _Catcher()


class StopAt:
    """A TrainerCallback that simulates an interruption: the run stops after `step` (the LR schedule still
    targets max_steps)."""

    def __new__(cls, step):
        from transformers import TrainerCallback

        class _StopAt(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                if state.global_step >= step:
                    control.should_training_stop = True

        return _StopAt()


def history(trainer, key):
    """Every logged value of ``key``, in order."""
    return [entry[key] for entry in trainer.state.log_history if key in entry]
