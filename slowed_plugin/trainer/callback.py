"""SLowED on any ``transformers.Trainer`` (TRL's ``SFTTrainer``, Axolotl's trainer): one callback.

    trainer = SFTTrainer(model, args=args, train_dataset=ds, callbacks=[SLowEDCallback(tau=10.0, mask_ratio=0.2)])

When the trainer is built (``on_init_end``) the callback attaches itself: it checks the trainer's settings
(:mod:`slowed_plugin.rules`), builds its features (:mod:`.features`: the Slow Tuning projector, the masked
loss, the safety subspace, the anchor, the training set), and installs its runtime
patches (:mod:`.patches`, the one list of what SLowED changes in a trainer); they are undone at train end.
The callback itself only reacts to events:

- ``on_step_end``: the first-step guard that masking really trains; projection every ``project_every`` steps,
  at the last step of an epoch (so that the step's log row, checkpoint and evaluation see the projected
  weights), before a checkpoint, and after the last step.
- ``on_epoch_end``: projection if the epoch's last step did not already project.
- ``on_train_end``: a last projection, then the patches are undone.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from transformers import Trainer, TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from ..config import SLowEDConfig
from ..core.kernels import warmup
from ..core.slow_tuning import ProjectionReport, SlowTuner
from ..core.weight_access import zero_shape
from ..log import get_logger
from ..rules import anchor_source_problem, check_trainer
from ..validate import SLowEDConfigError
from ..versions import check_supported_versions
from . import features, patches
from .checkpoint import REFERENCE_FILE, load_reference, save_reference
from .find_trainer import calling_trainer
from .loss import MaskedCausalLMLoss
from .metrics import METRICS, SLowEDMetrics
from .private_api import fused_lm_head_trl
from .safety_anchor import RowFormat, SafetyAnchor, trl_row_format

__all__ = ["METRICS", "REFERENCE_FILE", "SLowEDCallback"]

logger = get_logger()


class SLowEDCallback(TrainerCallback):
    """Adds SLowED to the trainer it is registered on.

    Args:
        config: a :class:`SLowEDConfig`, a mapping, or the short form ``[tau, mask_ratio]``.
        log: where the start line, the end line, the anchor's lines and the tau warning go (default: SLowED's
            logger); a front end with its own console (Axolotl) hands its logger.
        announce_start: whether the callback logs its settings at train begin (False where the front end
            announces them itself when it attaches).
        anchor_row_format: how the safety anchor's rows are prompted and tokenized, built from the trainer and the
            anchor's settings; None: TRL's ``SFTTrainer`` (Axolotl's plugin hands its own).
        installers: changes a front end adds to each installation, called with the :class:`~.patches.Patches`
            and the trainer (Axolotl: its step count recounted with the replay rows).
        **kwargs: alternatively to ``config``, the config's keys as keywords (``tau=10.0, mask_ratio=0.2``).
    """

    def __init__(
        self,
        config: SLowEDConfig | dict | list | tuple | None = None,
        *,
        log: Any = None,
        announce_start: bool = True,
        anchor_row_format: Callable[[Trainer, dict], RowFormat] | None = None,
        installers: Sequence[Callable[[patches.Patches, Trainer], None]] = (),
        **kwargs: Any,
    ) -> None:
        check_supported_versions()  # before the trainer, and so the model, is built
        if config is not None and kwargs:
            raise ValueError("Pass SLowED settings either as `config` or as keywords, not both.")
        self.config = SLowEDConfig.from_value(config if config is not None else kwargs)
        problem = anchor_source_problem(self.config)
        if problem is not None:  # before the model is handed over
            raise SLowEDConfigError(problem)
        self.trainer: Trainer | None = None
        self.tuner: SlowTuner | None = None
        self.metrics = SLowEDMetrics(self.config.masking)
        self.patches: patches.Patches | None = None  # undone at train end (and installed again by a new train())
        self._attached: patches.Patches | None = None  # undone by detach(): the monitor callback
        self.installers: list[Callable[[patches.Patches, Trainer], None]] = list(installers)
        self.monitor: Any = None
        self._loss: MaskedCausalLMLoss | None = None
        self._train_dataset: Any = None  # the training set SLowED trains on instead (anchor rows, reference mask)
        self.anchor: SafetyAnchor | None = None
        self.anchor_row_format = anchor_row_format
        self.subspace: Any = None  # the safety subspace's projector (SubspaceProjector), built at attach
        self._projected_at: int | None = None  # global step of the last projection
        self._seen_listed = False
        self._projections: list[ProjectionReport] = []  # this run's, for the end line and the tau check
        self._subspace_reports: list[Any] = []  # this run's safety-subspace projections, for the end line
        self.log = logger if log is None else log
        self.announce_start = announce_start
        # Guards that masking really trains (another component may compute the loss instead).
        self._loss_func_at_attach: Any = None
        self._verified = not self.config.online_masking

    # ------------------------------------------------------------------ attaching
    def attach(self, trainer: Trainer) -> None:
        """Install SLowED on ``trainer``. Idempotent; raises ``ValueError`` on a setting it cannot honour."""
        if self.trainer is trainer:
            return
        if self.trainer is not None:
            raise ValueError("This SLowEDCallback is already attached to another trainer; create one per trainer.")
        check_trainer(self.config, trainer)
        if self.patches is not None:  # attached before (then detached): never stack our own layers
            self.patches.undo()
        row_format = self.anchor_row_format or trl_row_format
        self.tuner = features.slow_tuner(self.config, trainer)
        self._loss = features.masked_loss(self.config, trainer, self.metrics.record_mask)
        self.subspace = features.safety_subspace(self.config, trainer, row_format, self.log)
        self.anchor = features.safety_anchor(self.config, trainer, row_format, self.log)
        self._train_dataset = features.training_set(self.config, trainer, self.anchor)
        self.trainer = trainer
        self._seen_listed = self in trainer.callback_handler.callbacks
        self._install()
        self._loss_func_at_attach = trainer.compute_loss_func
        self._attached = patches.Patches()
        if self.config.safety_monitor:
            from .monitor import SafetyMonitorCallback

            self.monitor = SafetyMonitorCallback.from_config(dict(self.config.safety_monitor), log=self.log)
            self._attached.add_callback(trainer, self.monitor)
            self.monitor.attach(trainer)

    def detach(self) -> None:
        """Undo every change SLowED made to the trainer (the patches are also undone at train end; the monitor
        callback it registered is removed here) and forget it."""
        if self.patches is not None:
            self.patches.undo()
        if self._attached is not None:
            self._attached.undo()
        self.trainer = None

    def _install(self) -> None:
        trainer = self.trainer
        self.patches = installed = patches.Patches(registered=self._registered)
        if self._loss is not None:
            if trainer.compute_loss_func is not None:
                patches.install_custom_loss_masking(installed, trainer, self.config, self.metrics.record_mask)
            else:
                patches.install_masked_forward(installed, self._loss.causal, self._loss)
            patches.install_kept_token_count(installed, trainer, self.config)
        if self._train_dataset is not None:
            patches.replace_train_dataset(installed, trainer, lambda _: self._train_dataset)
        if self.tuner is not None or self.subspace is not None:
            write_reference = self._save_reference if self.tuner is not None and self.tuner.dense else None
            patches.install_checkpoint_hook(installed, trainer, self._project_before_checkpoint, write_reference)
        patches.install_metrics_log(installed, trainer, self.metrics.drain)
        for install in self.installers:
            install(installed, trainer)

    def _registered(self) -> bool:
        # Axolotl attaches before it registers the callback: only a callback seen listed and then gone was removed.
        listed = self.trainer is not None and self in self.trainer.callback_handler.callbacks
        self._seen_listed = self._seen_listed or listed
        return listed or not self._seen_listed

    def on_init_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any):
        # Built with `callbacks=[...]`: attach now, so that a bad combination fails at construction.
        trainer = calling_trainer(self)
        if trainer is not None:
            self.attach(trainer)

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any):
        if self.trainer is None:  # added later with `trainer.add_callback(...)`
            trainer = calling_trainer(self)
            if trainer is None:
                raise RuntimeError("SLowEDCallback could not find its trainer; call `callback.attach(trainer)`.")
            self.attach(trainer)
        elif not self.patches.active:  # a second `train()` after the first one's end undid the patches
            self._install()
        if self._loss is not None and self.trainer.compute_loss_func is None and fused_lm_head_trl():
            # TRL 1.15+ wrapped the forward with its fused LM head after SLowED attached: its calls are sent down.
            patches.redirect_fused_lm_head(self.patches, self._loss.causal, self._loss)
        if self.config.online_masking:
            self._warmup_kernels(args)
        self._projections = []
        self._subspace_reports = []
        if self.announce_start and state.is_world_process_zero:
            self.log.info(self.config.describe())
        if self.tuner is not None and self.tuner.dense and state.global_step > 0:
            load_reference(self.tuner, args.output_dir, state.global_step)
        if self.config.online_masking and self.trainer.compute_loss_func is not self._loss_func_at_attach:
            raise RuntimeError(
                "SLowED: the trainer's `compute_loss_func` was replaced after SLowED attached "
                f"(now {self.trainer.compute_loss_func!r}), so its loss would train unmasked. Install that loss "
                "before the trainer is built, or set `mask_ratio: 0`."
            )

    # ------------------------------------------------------------------ events
    def on_step_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any):
        # The anchor's KL mode: its term's gradient, before the step's micro-batches add theirs (issue 29).
        if self.anchor is not None and self.anchor.mode == "kl" and self.patches.active:
            self.anchor.kl_step(self.trainer, state.global_step)

    def on_pre_optimizer_step(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        # The anchor's gradient mode: the accumulated (and clipped) gradient, projected before the optimizer uses it.
        if self.anchor is not None and self.anchor.mode == "gradient" and self.patches.active:
            self.anchor.constrain(self.trainer, state.global_step)

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any):
        if not self._verified:
            if not self.metrics.recorded:
                raise RuntimeError(
                    "SLowED: Low-Entropy Masking did not run in the first optimizer step: something else computes "
                    f"the training loss ({type(self.trainer).__name__}.compute_loss or a fused loss kernel). Remove "
                    "that component, or set `mask_ratio: 0`."
                )
            self._verified = True
        if self.tuner is None and self.subspace is None:
            return
        every = self.config.project_every
        due = (
            (state.max_steps > 0 and state.global_step >= state.max_steps)  # the last step
            or (every == "epoch" and _ends_epoch(state))
            or (every != "epoch" and state.global_step % every == 0)
            or control.should_save  # the checkpoint written right after this event holds projected weights
        )
        if due:
            self._project(state, control)

    def on_epoch_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any):
        # Reached without the last step's projection when the epoch's step count is unknown (iterable datasets).
        if (self.tuner is not None or self.subspace is not None) and self.config.project_every == "epoch":
            self._project(state, control)

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any):
        # Guards a loop that ended without reaching `on_step_end` of its last step.
        if (self.tuner is not None or self.subspace is not None) and self._projected_at != state.global_step:
            if self.subspace is not None:  # first: the ball's scaling keeps its zero components zero
                self._subspace_reports.append(self.subspace.project())
            if self.tuner is not None:
                self._projections.append(self.tuner.project())
            self._projected_at = state.global_step
        if self.subspace is not None and state.is_world_process_zero:
            self.log.info(_subspace_end_line(self._subspace_reports))
        if self.tuner is not None:
            line = _end_line(self.tuner, self._projections)  # on every rank: sharded norms are gathered
            if state.is_world_process_zero:
                self.log.info(line)
        if (
            self.anchor is not None
            and self.anchor.mode == "kl"
            and self.anchor.kl_values
            and state.is_world_process_zero
        ):
            values = self.anchor.kl_values
            self.log.info(
                f"SLowED: safety anchor: KL(starting model || model) per answer token on the anchor batches: "
                f"{values[0]:.4g} at the first of {len(values)} optimizer steps, {values[-1]:.4g} at the last."
            )
        if self.anchor is not None and self.anchor.mode == "gradient" and state.is_world_process_zero:
            self.log.info(
                f"SLowED: safety anchor: the gradient was projected at {self.anchor.projected_steps} of "
                f"{self.anchor.constrained_steps} optimizer steps (where it would have raised the anchor loss)."
            )
        if self.patches is not None:
            self.patches.undo()

    # ------------------------------------------------------------------ Slow Tuning
    def _project(self, state: TrainerState, control: TrainerControl | None) -> None:
        # Several events can ask for one step (the epoch's last step, then on_epoch_end; a save): no optimizer
        # step came between, so a second pass would find nothing to scale (and log a misleading second row).
        if self._projected_at == state.global_step:
            return
        self._projected_at = state.global_step
        if self.subspace is not None:
            # Before the ball: the projection never lengthens ΔW, and the ball's scaling by a number keeps the
            # components it removed at zero, so the result satisfies both (tests/core/test_subspace.py).
            removed = self.subspace.project()
            self._subspace_reports.append(removed)
            self.metrics.record_subspace(removed)
        if self.tuner is None:
            if control is not None:
                control.should_log = True
            return
        report = self.tuner.project()
        self._projections.append(report)
        self.metrics.record_projection(report)
        if len(self._projections) == 1 and report.num_projected == 0 and state.is_world_process_zero:
            self.log.warning(_unbound_tau_warning(self.tuner.tau, report, state.global_step))
        if control is not None:
            control.should_log = True  # the projection's metrics reach the logs at this step

    def _project_before_checkpoint(self) -> None:
        # A save the step's events did not announce (e.g. `save_strategy="best"`): its metrics go to the next row.
        self._project(self.trainer.state, None)

    def _save_reference(self, checkpoint_dir: str) -> None:
        if getattr(self.trainer.args, "process_index", 0) == 0:
            save_reference(self.tuner, checkpoint_dir)

    # ------------------------------------------------------------------ Low-Entropy Masking
    def _warmup_kernels(self, args: TrainingArguments) -> None:
        """Compile the fused loss kernels (or load them from inductor's on-disk cache) before the
        first step, for every dtype the loss will see, so that no training step pays for it."""
        import torch

        if self._loss is None or self.trainer.compute_loss_func is not None:
            return  # a custom loss gets its labels masked by the reference code, which compiles nothing
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
        vocab = zero_shape(weight)[0]
        path = self._loss.path()
        # The hidden-states loss applies the model's logit scale and soft-cap inside the kernels (one graph per
        # value); on logits the model already applied them.
        scale, softcap = (
            (self._loss.head.logit_scale, self._loss.head.softcap) if path == "hidden_states" else (1.0, None)
        )
        seconds = warmup(vocab, tuple(dtypes), param.device, scale, softcap, paths=(path,))
        if seconds > 1:
            logger.info("SLowED: fused loss kernels ready in %.1f s (compiled once per process).", seconds)


def _unbound_tau_warning(tau: float, report: ProjectionReport, step: int) -> str:
    return (
        f"SLowED: tau={tau:g} did not bind at the first projection (step {step}): the largest weight change is "
        f"max ||ΔW||_F = {report.max_norm:.3g}, so Slow Tuning has changed nothing yet. To choose tau, train a "
        "short plain run and read `slowed/max_delta_norm` (or `slowed demo --sweep-tau` for the trade-off); a "
        "tau below the norm a plain epoch reaches is one that binds."
    )


def _end_line(tuner: SlowTuner, reports: list[ProjectionReport]) -> str:
    largest = float(tuner.norms().max())
    projected = sum(1 for r in reports if r.num_projected)
    return (
        f"SLowED: trained weights satisfy max ||ΔW||_F = {largest:.4g} <= tau = {tuner.tau:g} "
        f"({projected} of {len(reports)} projections this run scaled at least one of {len(tuner.weights)} weights)."
    )


def _subspace_end_line(reports: list[Any]) -> str:
    largest = max((r.max_removed for r in reports), default=0.0)
    mean = sum(r.mean_removed for r in reports) / max(1, len(reports))
    return (
        f"SLowED: safety subspace: {len(reports)} projections this run removed up to {largest:.1%} of a weight's "
        f"change (mean {mean:.1%} per weight and projection); no adapted weight change has a component along the "
        "safety directions."
    )


def _ends_epoch(state: TrainerState) -> bool:
    # transformers sets `epoch = e + (step + 1) / steps_in_epoch` after each optimizer step: whole at the last one.
    return state.epoch is not None and float(state.epoch).is_integer() and state.global_step > 0
