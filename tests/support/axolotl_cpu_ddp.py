"""A test-only Axolotl plugin that lets ``axolotl train`` run DDP on CPU (gloo), and records each rank's adapter.

Axolotl 0.19 has no supported CPU multi-process path:

- ``normalize_config`` (``axolotl/utils/config/__init__.py``) ends, whenever ``WORLD_SIZE > 1``, with
  ``cfg.device_map = {"": int(os.environ.get("LOCAL_RANK", 0))}``. That overwrites the ``{"": "cpu"}``
  that ``choose_device`` has just chosen, any ``device_map`` of the YAML, and the ``None`` that ``choose_device``
  sets under ``accelerate launch`` (``ACCELERATE_USE_*``). ``ModelLoader._set_device_map_config`` passes it to
  ``from_pretrained``, where transformers' ``caching_allocator_warmup`` calls ``is_accelerator_device(0)``, i.e.
  ``torch.device(0)``, which raises "Cannot access accelerator device when none is available" on a CPU-only build;
- ``accelerate launch --cpu --num_processes 2`` (what ``--launcher accelerate -- --cpu --num_processes 2`` runs)
  starts a single process: accelerate's CPU launcher starts several only through ``mpirun``;
- under torchrun, accelerate's ``PartialState`` is ``DistributedType.NO`` on a CPU-only build unless asked for the
  CPU: ``ACCELERATE_USE_CPU=true`` in the environment (read by transformers' ``TrainingArguments``) gives
  ``MULTI_CPU`` over gloo. Without it every rank trains a model of its own and nothing fails.

The plugin hook that runs after ``normalize_config`` and before the model loader reads ``cfg.device_map`` is
``load_datasets`` (``axolotl.cli.train.do_train`` calls it first): this plugin sets the CPU placement there
and returns ``None``, so Axolotl still loads the datasets itself. ``pre_model_load`` is too late: the loader
has already copied ``cfg.device_map`` into its ``from_pretrained`` arguments by then.

List it in ``plugins`` as ``axolotl_cpu_ddp.CpuDdpPlugin`` (the tests folder is on the training process's
``PYTHONPATH``, see ``axolotl_helpers.offline_env``) and launch with ``ACCELERATE_USE_CPU=true``. For tests only.

DeepSpeed (``deepspeed:`` in the recipe) needs ``CpuDeepSpeedPlugin`` instead, launched *without*
``ACCELERATE_USE_CPU``. accelerate 1.13 gives DeepSpeed over several CPU processes only when its process state is
``MULTI_CPU`` (made with ``cpu=True``) and its ``AcceleratorState`` is made with ``cpu=False`` (``DEEPSPEED`` needs
``not cpu`` in ``AcceleratorState.__init__``): what a TRL script with ``use_cpu=True`` gets. Under Axolotl:

- with ``ACCELERATE_USE_CPU=true`` both are made with ``cpu=True``: the trainer runs ``MULTI_CPU`` DDP, and DeepSpeed
  is silently off (no DeepSpeedEngine, no ZeRO);
- without it, the process state has no backend (``num_processes`` 1, ``DistributedType.DEEPSPEED``): each rank
  trains as if alone while DeepSpeed's own communicator sees 2 ranks;
- ``AxolotlTrainer.create_accelerator_and_postprocess`` resets accelerate's state before the Accelerator is built
  (``AcceleratorState._reset_state(reset_partial_state=True)``), and ``accelerator_config: {use_configured_state:
  true}`` cannot keep it: transformers' ``_setup_devices`` pops that key from the config before Axolotl reads it.

``CpuDeepSpeedPlugin`` therefore passes ``use_cpu=True`` to the training arguments (``get_training_args``: a
``MULTI_CPU`` process state over gloo) and returns a trainer class that skips only that reset (``get_trainer_cls``),
so the Accelerator is made with ``cpu=False`` and DeepSpeed on. On GPUs none of this is needed.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

PLUGIN = "axolotl_cpu_ddp.CpuDdpPlugin"
DEEPSPEED_PLUGIN = "axolotl_cpu_ddp.CpuDeepSpeedPlugin"


def rank_file(output_dir: str | os.PathLike, rank: int) -> Path:
    """Where rank ``rank`` leaves its trained adapter (see :meth:`CpuDdpPlugin.post_train`)."""
    return Path(output_dir) / f"rank{rank}-adapter.pt"


def _full(param) -> Any:
    """The whole tensor, gathered first if it is a DeepSpeed ZeRO-3 partition (Axolotl's second ``post_train`` call
    comes after the process group is gone, when the tensors are whole again)."""
    if hasattr(param, "ds_id") and param.numel() == 0:
        from deepspeed.runtime.zero import GatheredParameters

        with GatheredParameters([param], modifier_rank=None):
            return param.detach().cpu().clone()
    return param.detach().cpu().clone()


def __getattr__(name: str) -> Any:
    # Built on first use, so that the test process can import this module without importing axolotl.
    if name == "CpuDdpPlugin":
        from axolotl.integrations.base import BasePlugin

        class CpuDdpPlugin(BasePlugin):
            _trainer_state: dict | None = None
            _trainer = None

            def load_datasets(self, cfg, preprocess=False):
                if (cfg.world_size or 1) > 1 and str(cfg.device) == "cpu":
                    cfg.device_map = {"": "cpu"}
                return None  # Axolotl loads the datasets as usual

            def post_trainer_create(self, cfg, trainer):
                # What the Trainer really runs: without ACCELERATE_USE_CPU, accelerate gives DistributedType.NO on a
                # CPU-only build and every rank trains a model of its own, with no gradient all-reduce.
                self._trainer = trainer
                self._trainer_state = {
                    "distributed_type": str(trainer.accelerator.distributed_type),
                    "num_processes": trainer.accelerator.num_processes,
                    "backend": trainer.accelerator.state.backend,
                }

            def post_train(self, cfg, model):
                """Each rank saves its LoRA tensors as they stand after training (after the last Slow Tuning step).

                Axolotl calls this hook twice (after ``trainer.train`` and at the end of ``train``); both see the same weights.
                """
                import torch

                rank = int(os.environ.get("RANK", 0))
                adapter = {key: _full(p) for key, p in model.named_parameters() if "lora_" in key}
                # The engine that trained: DeepSpeedEngine with `deepspeed:`, DistributedDataParallel under DDP.
                engine = type(self._trainer.model_wrapped).__name__ if self._trainer is not None else None
                record = {"rank": rank, "trainer": self._trainer_state, "engine": engine, "adapter": adapter}
                torch.save(record, rank_file(cfg.output_dir, rank))

        globals()[name] = CpuDdpPlugin
        return CpuDdpPlugin
    if name == "CpuDeepSpeedPlugin":
        from axolotl.core.trainers.base import AxolotlTrainer

        class CpuDeepSpeedTrainer(AxolotlTrainer):
            def create_accelerator_and_postprocess(self):
                # AxolotlTrainer's own override resets accelerate's state first, so that the Accelerator starts
                # over from the environment; skip that reset (and only it) to keep the MULTI_CPU state that
                # `use_cpu=True` set up.
                super(AxolotlTrainer, self).create_accelerator_and_postprocess()

        class CpuDeepSpeedPlugin(__getattr__("CpuDdpPlugin")):
            def get_training_args(self, cfg):
                return {"use_cpu": True}

            def get_trainer_cls(self, cfg):
                return CpuDeepSpeedTrainer

        globals()[name] = CpuDeepSpeedPlugin
        return CpuDeepSpeedPlugin
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
