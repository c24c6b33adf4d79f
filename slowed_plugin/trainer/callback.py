"""SLowED on any ``transformers.Trainer`` (TRL's ``SFTTrainer``, Axolotl's trainer): one callback.

    trainer = SFTTrainer(model, args=args, train_dataset=ds, callbacks=[SLowEDCallback(tau=10.0, mask_ratio=0.2)])

When the trainer is built (``on_init_end``) the callback attaches itself to it:

- Low-Entropy Masking: the causal LM's ``forward`` is wrapped so that, in training, the loss is
  the cross-entropy over the kept targets (:mod:`slowed_plugin.core.masking`); TRL's ``chunked_nll``
  forward, which never materialises logits, is bypassed for the training loss. Evaluation goes
  through the untouched forward, so eval loss stays the plain cross-entropy. The trainer's
  per-step token count (``num_items_in_batch``) is replaced by the kept count of the step, which
  depends on labels only, so gradient accumulation and multi-process token averaging stay exact.
- Slow Tuning: projection after every epoch (or every ``project_every`` steps), after the last
  step, and at train end (:mod:`slowed_plugin.core.slow_tuning`).
- Metrics go into the trainer's own ``log`` so that every reporter (W&B, TensorBoard) gets them.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
import sys
import types
from dataclasses import dataclass, fields
from typing import Any

import torch
from transformers import Trainer, TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.modeling_outputs import CausalLMOutputWithPast
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from ..config import SLowEDConfig
from ..core.hidden_states_loss import chunked_masked_causal_lm_loss, lm_head_parameters
from ..core.logits_loss import fused_masked_causal_lm_loss, warmup
from ..core.masking import kept_token_count, mask_low_entropy_targets
from ..core.slow_tuning import SlowTuner
from ..rules import check_trainer

logger = logging.getLogger("slowed_plugin")

REFERENCE_FILE = "slowed_reference.pt"
# Metric names as they appear in the trainer's logs.
METRICS = (
    "slowed/masked_fraction",
    "slowed/entropy_threshold",
    "slowed/max_delta_norm",
    "slowed/layers_projected",
    "slowed/min_scale",
)


@dataclass
class SLowEDCausalLMOutput(CausalLMOutputWithPast):
    """The model output of a masked training step, with the fields TRL's ``chunked_nll`` metrics read."""

    num_valid_tokens: torch.Tensor | None = None
    entropy_sum: torch.Tensor | None = None
    num_correct_tokens: torch.Tensor | None = None
    aux_loss: torch.Tensor | None = None
    router_logits: tuple[torch.Tensor, ...] | None = None


_OUTPUT_FIELDS = {f.name for f in fields(SLowEDCausalLMOutput)}


class SLowEDCallback(TrainerCallback):
    """Adds SLowED to the trainer it is registered on.

    Args:
        config: a :class:`SLowEDConfig`, a mapping, or the short form ``[tau, mask_ratio]``.
        **kwargs: alternatively, the config's keys as keywords (``tau=10.0, mask_ratio=0.2``).
    """

    def __init__(self, config: SLowEDConfig | dict | list | tuple | None = None, **kwargs: Any) -> None:
        if config is not None and kwargs:
            raise ValueError("Pass SLowED settings either as `config` or as keywords, not both.")
        self.config = SLowEDConfig.from_value(config if config is not None else kwargs)
        self.trainer: Trainer | None = None
        self.tuner: SlowTuner | None = None
        # counts of candidates and dropped targets, sum and count of per-scope thresholds
        self._mask_sums = torch.zeros(4, dtype=torch.float64)
        self._last_projection: dict[str, float] = {}
        self._projected_at: int | None = None  # global step of the last projection
        # Guards that masking really trains (another component may compute the loss instead).
        self._loss_func_at_attach: Any = None
        self._masked_loss_ran = False
        self._verified = not online_masking(self.config)

    # ------------------------------------------------------------------ attaching
    def attach(self, trainer: Trainer) -> None:
        """Install SLowED on ``trainer``. Idempotent; raises ``ValueError`` on a setting it cannot honour."""
        if self.trainer is trainer:
            return
        if self.trainer is not None:
            raise ValueError("This SLowEDCallback is already attached to another trainer; create one per trainer.")
        check_trainer(self.config, trainer)
        online = online_masking(self.config)
        if self.config.slow_tuning:
            self.tuner = SlowTuner(trainer.model, self.config.tau, self.config.tau_scope, self.config.reference_device)
            if self.tuner.dense:
                self._install_reference_save(trainer)
        if online:
            self._install_masked_loss(trainer)
            self._install_step_count(trainer)
        elif self.config.masking:
            self._apply_reference_mask(trainer)
        self._install_log(trainer)
        self.trainer = trainer
        self._loss_func_at_attach = trainer.compute_loss_func
        if self.config.safety_monitor:
            from .monitor import SafetyMonitorCallback

            monitor = SafetyMonitorCallback.from_config(dict(self.config.safety_monitor))
            trainer.add_callback(monitor)
            monitor.attach(trainer)
        logger.info(self.config.describe())

    def on_init_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any):
        # Built with `callbacks=[...]`: attach now, so that a bad combination fails at construction.
        trainer = _calling_trainer(self)
        if trainer is not None:
            self.attach(trainer)

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any):
        if self.trainer is None:  # added later with `trainer.add_callback(...)`
            trainer = _calling_trainer(self)
            if trainer is None:
                raise RuntimeError("SLowEDCallback could not find its trainer; call `callback.attach(trainer)`.")
            self.attach(trainer)
        if online_masking(self.config):
            self._warmup_kernels(args)
        if self.tuner is not None and self.tuner.dense and state.global_step > 0:
            self._load_reference(args, state)
        if online_masking(self.config) and self.trainer.compute_loss_func is not self._loss_func_at_attach:
            raise RuntimeError(
                "SLowED: the trainer's `compute_loss_func` was replaced after SLowED attached "
                f"(now {self.trainer.compute_loss_func!r}), so its loss would train unmasked. Install that loss "
                "before the trainer is built, or set `mask_ratio: 0`."
            )

    # ------------------------------------------------------------------ Slow Tuning
    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any):
        if not self._verified:
            if not self._masked_loss_ran:
                raise RuntimeError(
                    "SLowED: Low-Entropy Masking did not run in the first optimizer step: something else computes "
                    f"the training loss ({type(self.trainer).__name__}.compute_loss or a fused loss kernel). Remove "
                    "that component, or set `mask_ratio: 0`."
                )
            self._verified = True
        every = self.config.project_every
        last = state.max_steps > 0 and state.global_step >= state.max_steps
        if self.tuner is not None and (last or (every != "epoch" and state.global_step % every == 0)):
            self._project(state, control)

    def on_epoch_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any):
        if self.tuner is not None and self.config.project_every == "epoch":
            self._project(state, control)

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any):
        # Guards a loop that ended without reaching `on_step_end` of its last step.
        if self.tuner is not None and self._projected_at != state.global_step:
            self.tuner.project()

    def _install_reference_save(self, trainer: Trainer) -> None:
        """Full fine-tuning needs its start weights to resume exactly (LoRA's start is ΔW = 0). They are written
        right after the model, inside transformers' checkpoint save: before ``trainer_state.json`` (so a checkpoint
        that transformers can resume always has them) and before ``save_total_limit`` deletes older checkpoints
        (``on_save`` runs after that deletion, so a failed write there could leave no resumable checkpoint)."""
        save_model = trainer.save_model

        def save_model_with_reference(output_dir: str | None = None, _internal_call: bool = False) -> None:
            save_model(output_dir, _internal_call=_internal_call)
            if (
                _internal_call
                and output_dir is not None
                and os.path.basename(os.path.normpath(output_dir)).startswith(PREFIX_CHECKPOINT_DIR)
                and _is_main_process(trainer.args)
            ):
                _atomic_save(self.tuner.state_dict(), os.path.join(output_dir, REFERENCE_FILE))

        trainer.save_model = save_model_with_reference

    def _load_reference(self, args: TrainingArguments, state: TrainerState) -> None:
        path = os.path.join(args.output_dir, f"checkpoint-{state.global_step}", REFERENCE_FILE)
        if not os.path.isfile(path):
            raise ValueError(
                f"Resuming full fine-tuning with Slow Tuning needs the initial weights saved beside the checkpoint "
                f"({path} is missing): this checkpoint was written without SLowED. Start a new run instead."
            )
        self.tuner.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))

    def _project(self, state: TrainerState, control: TrainerControl) -> None:
        # A run that ends at `max_steps` on an epoch boundary reaches here twice for one step; no optimizer step
        # came between, so the second pass would find nothing to scale (and log a misleading second row).
        if self._projected_at == state.global_step:
            return
        self._projected_at = state.global_step
        report = self.tuner.project()
        self._last_projection = {
            "slowed/max_delta_norm": report.max_norm,
            "slowed/layers_projected": float(report.num_projected),
            "slowed/min_scale": report.min_scale,
        }
        control.should_log = True  # the projection's metrics reach the logs at this step

    # ------------------------------------------------------------------ Low-Entropy Masking
    def _install_masked_loss(self, trainer: Trainer) -> None:
        cfg = self.config
        if trainer.compute_loss_func is not None:
            # Compose with a custom loss: hand it the masked labels instead of replacing it.
            inner = trainer.compute_loss_func
            compute_loss = trainer.compute_loss
            packed: dict[str, Any] = {}

            # compute_loss_func never sees the inputs: keep the packed layout for the `sequence` scope.
            def compute_loss_with_positions(model, inputs, *args, **kwargs):
                packed["position_ids"] = inputs.get("position_ids")
                try:
                    return compute_loss(model, inputs, *args, **kwargs)
                finally:
                    packed.clear()

            trainer.compute_loss = compute_loss_with_positions

            def compute_loss_func(outputs, labels, num_items_in_batch=None, **kwargs):
                if outputs.logits is not None and trainer.model.training:
                    masked, stats = mask_low_entropy_targets(
                        outputs.logits, labels, cfg.mask_ratio, cfg.mask_scope, position_ids=packed.get("position_ids")
                    )
                    self._record(stats)
                    labels = torch.nn.functional.pad(masked, (1, 0), value=-100)
                return inner(outputs, labels, num_items_in_batch=num_items_in_batch, **kwargs)

            trainer.compute_loss_func = compute_loss_func
            return

        model = trainer.model
        target = model.get_base_model() if hasattr(model, "get_base_model") else model
        previous = target.forward
        config = target.config
        router_coef = getattr(config, "router_aux_loss_coef", 0.0)
        callback = self
        # Chunked from hidden states (no full logits, as TRL's default) for a decoder + linear head;
        # MoE (router aux loss), VLMs and a PEFT-wrapped or quantised lm_head take the fused loss on logits.
        backbone, head = getattr(target, "base_model", None), target.get_output_embeddings()
        chunked = (
            getattr(trainer.args, "loss_type", None) != "nll"  # TRL's "nll" reads the logits for its metrics
            and backbone is not None
            and backbone is not target
            and head is not None
            and not getattr(config, "output_router_logits", False)
            and getattr(config, "text_config", None) is None
        )
        if chunked:
            try:
                lm_head_parameters(head)
            except ValueError:
                chunked = False
        logit_scale = float(getattr(config, "logit_scale", None) or 1.0)
        softcap = getattr(config, "final_logit_softcapping", None)

        def forward(self_model, *args, labels=None, shift_labels=None, num_items_in_batch=None, **kwargs):
            if not self_model.training or (labels is None and shift_labels is None):
                passed = {"labels": labels, "shift_labels": shift_labels, "num_items_in_batch": num_items_in_batch}
                return previous(*args, **kwargs, **{k: v for k, v in passed.items() if v is not None})
            common = dict(
                num_items_in_batch=num_items_in_batch,
                position_ids=kwargs.get("position_ids"),
                shift_labels=shift_labels,
            )
            try:
                if chunked and not kwargs.get("output_router_logits"):
                    kwargs.pop("use_cache", None)
                    kwargs.pop("logits_to_keep", None)
                    outputs = backbone(*args, use_cache=False, **kwargs)
                    logits = None
                    loss, stats, extra = chunked_masked_causal_lm_loss(
                        outputs.last_hidden_state,
                        head,
                        labels,
                        cfg.mask_ratio,
                        cfg.mask_scope,
                        **common,
                        logit_scale=logit_scale,
                        final_logit_softcapping=softcap,
                    )
                else:
                    # No labels: the model (or TRL's chunked forward, which then falls back) returns logits.
                    outputs = previous(*args, **kwargs)
                    logits = outputs.logits
                    loss, stats, extra = fused_masked_causal_lm_loss(
                        logits, labels, cfg.mask_ratio, cfg.mask_scope, **common, return_extra=True
                    )
            except FloatingPointError as err:  # stop before the optimizer writes NaN into the weights
                step = callback.trainer.state.global_step + 1 if callback.trainer is not None else "?"
                raise FloatingPointError(f"{err} (optimizer step {step}); the weights were not updated.") from None
            if getattr(outputs, "aux_loss", None) is not None and router_coef:
                loss = loss + router_coef * outputs.aux_loss.to(loss.device)
            callback._record(stats)
            # TRL's chunked_nll metrics read these fields instead of logits. They must be declared fields:
            # accelerate's fp32 output conversion rebuilds the output from its keys.
            kept = {k: v for k, v in outputs.items() if k in _OUTPUT_FIELDS}
            return SLowEDCausalLMOutput(**{**kept, "loss": loss, "logits": logits}, **extra)

        # `previous` is bound: re-add `self`, so that once the wrapper is bound its signature still starts with
        # `input_ids` (Trainer._remove_unused_columns keeps only the columns that `forward` names).
        signature = inspect.signature(previous)
        owner = inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)
        forward.__signature__ = signature.replace(parameters=[owner, *signature.parameters.values()])
        target.forward = types.MethodType(forward, target)

    def _warmup_kernels(self, args: TrainingArguments) -> None:
        """Compile the fused loss kernels (or load them from inductor's on-disk cache) before the
        first step, for every dtype the loss will see, so that no training step pays for it."""
        model = self.trainer.model
        param = next(model.parameters())
        dtypes = {param.dtype}
        if args.bf16:
            dtypes.add(torch.bfloat16)
        if args.fp16:
            dtypes.add(torch.float16)
        weight = getattr(model.get_output_embeddings(), "weight", None)
        if weight is None:
            return
        # The chunked loss applies the model's logit scale and soft-cap inside the kernels (one graph per value).
        config = getattr(model, "config", None)
        scale = float(getattr(config, "logit_scale", None) or 1.0)
        seconds = warmup(
            weight.shape[0], tuple(dtypes), param.device, scale, getattr(config, "final_logit_softcapping", None)
        )
        if seconds > 1:
            logger.info("SLowED: fused loss kernels ready in %.1f s (compiled once per process).", seconds)

    def _apply_reference_mask(self, trainer: Trainer) -> None:
        """`entropy_source: reference`: mask the training set once with the initial model's entropies."""
        from ..core.reference_mask import apply_reference_mask

        dataset = trainer.train_dataset
        if not (hasattr(dataset, "map") and hasattr(dataset, "__len__") and "input_ids" in dataset.column_names):
            raise ValueError(
                "`entropy_source: reference` needs a tokenized map-style `datasets.Dataset` (with `input_ids`) as "
                f"train_dataset, got {type(dataset).__name__}. Use `entropy_source: online` for streaming datasets."
            )
        trainer.train_dataset = apply_reference_mask(
            trainer.model, dataset, self.config.mask_ratio, self.config.mask_scope
        )

    def _install_step_count(self, trainer: Trainer) -> None:
        """Make ``num_items_in_batch`` of each optimizer step the count of *kept* targets."""
        cfg = self.config
        original = trainer.get_batch_samples

        def get_batch_samples(epoch_iterator, num_batches, device):
            batch_samples, num_items = original(epoch_iterator, num_batches, device)
            if num_items is None:
                return batch_samples, num_items
            # Let the trainer's own counter do the cross-device reduction: hand it stand-in batches whose
            # `shift_labels` hold exactly as many non-ignored entries as the real batches keep.
            stand_ins = [
                {
                    "labels": batch["labels"],
                    "shift_labels": torch.zeros(
                        int(
                            kept_token_count(
                                batch["labels"],
                                cfg.mask_ratio,
                                cfg.mask_scope,
                                batch.get("position_ids"),
                                batch.get("shift_labels"),
                            )
                        ),
                        dtype=torch.long,
                    ),
                }
                for batch in batch_samples
            ]
            return batch_samples, trainer._get_num_items_in_batch(stand_ins, device)

        trainer.get_batch_samples = get_batch_samples

    def _record(self, stats) -> None:
        if stats is None:
            return
        self._masked_loss_ran = True
        values = torch.stack([stats.candidates, stats.dropped, stats.threshold_sum, stats.threshold_count])
        self._mask_sums += values.detach().to("cpu", torch.float64)

    # ------------------------------------------------------------------ metrics
    def _install_log(self, trainer: Trainer) -> None:
        original = trainer.log

        def log(logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
            if not any(key.startswith("eval_") for key in logs):
                logs.update(self.drain_metrics())
            return original(logs, *args, **kwargs)

        trainer.log = log

    def drain_metrics(self) -> dict[str, float]:
        """Metrics accumulated since the last call (reduced over processes), then reset."""
        metrics: dict[str, float] = {}
        if self.config.masking:
            sums = self._mask_sums.clone()
            if torch.distributed.is_available() and torch.distributed.is_initialized():
                device = _reduce_device()
                sums = sums.to(device)
                torch.distributed.all_reduce(sums)
                sums = sums.cpu()
            candidates, dropped, threshold_sum, threshold_count = sums.tolist()
            if candidates > 0:
                metrics["slowed/masked_fraction"] = dropped / candidates
            if threshold_count > 0:
                metrics["slowed/entropy_threshold"] = threshold_sum / threshold_count
            self._mask_sums.zero_()
        metrics.update(self._last_projection)
        self._last_projection = {}
        return metrics


def _calling_trainer(callback: SLowEDCallback) -> Trainer | None:
    """The Trainer whose method is calling this callback (callbacks are not handed their trainer)."""
    frame = sys._getframe(1)
    while frame is not None:
        candidate = frame.f_locals.get("self")
        if isinstance(candidate, Trainer) and callback in candidate.callback_handler.callbacks:
            return candidate
        frame = frame.f_back
    return None


def _atomic_save(obj: Any, path: str) -> None:
    """Write then rename, so a checkpoint never holds a truncated file under its real name; on any failure the
    temporary file is removed too."""
    tmp = path + ".tmp"
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def _is_main_process(args: TrainingArguments) -> bool:
    return getattr(args, "process_index", 0) == 0


def _reduce_device() -> torch.device:
    backend = torch.distributed.get_backend()
    if backend == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def online_masking(config: SLowEDConfig) -> bool:
    """Whether masking runs in the training step (`online`), not once on the dataset (`reference`)."""
    return config.masking and config.entropy_source == "online"
