"""How Slow Tuning reads and writes a weight: in place on the module's tensor, or through DeepSpeed ZeRO.

:class:`WeightAccess` is the plain case (one process, DDP, FSDP2's DTensor shards): the module's tensor is
the trained value, read whole (``DTensor.full_tensor()``) and changed in place. :class:`ZeroAccess` is the
DeepSpeed case: the optimizer steps its own fp32 master copy (ZeRO-1/2: a flat fp32 partition; ZeRO-3: fp32
partitions of every parameter) and copies it back over the module's tensors after every step, so a change to
the module's tensor alone is lost at the next step, and a change to the master alone is invisible to the next
forward and to ``save_model`` until that step. :class:`ZeroAccess` therefore reads the full fp32 master
(``deepspeed.utils.safe_get_full_fp32_param``) and writes the new value to both: the master
(``safe_set_full_fp32_param``) and the module copy (ZeRO-1/2: the full tensor every rank holds; ZeRO-3:
``GatheredParameters(modifier_rank=0)``, which re-partitions rank 0's value to every rank on exit).

Every call here is collective under ZeRO (gathers and all-reduces): all ranks must call the same accesses in
the same order, which Slow Tuning does (same weights, same norms, same factors on every rank).
"""

from __future__ import annotations

import torch


def _is_dtensor(tensor: torch.Tensor) -> bool:
    dtensor = getattr(getattr(torch.distributed, "tensor", None), "DTensor", None)
    return dtensor is not None and isinstance(tensor, dtensor)


def is_zero3_param(tensor: torch.Tensor) -> bool:
    """Whether ``tensor`` is a DeepSpeed ZeRO-3 parameter (partitioned: its ``data`` is not the weight)."""
    return hasattr(tensor, "ds_id") and hasattr(tensor, "ds_status")


def zero_shape(tensor: torch.Tensor) -> tuple[int, ...]:
    """The full shape of a parameter: DeepSpeed's ``ds_shape`` for a ZeRO-3 partition (whose own shape is
    ``(0,)``), else its shape."""
    return tuple(getattr(tensor, "ds_shape", tensor.shape))


def gathered_copy(param: torch.Tensor) -> torch.Tensor:
    """A detached full copy of a ZeRO-3 parameter's module value, gathered for this one parameter only (so that
    a full fine-tuning reference never needs the whole model on one rank)."""
    from deepspeed.runtime.zero import GatheredParameters

    with GatheredParameters([param], modifier_rank=None):
        return param.detach().clone()


class WeightAccess:
    """The module's tensor is the trained value (no engine, DDP, FSDP2)."""

    def read(self, param: torch.Tensor) -> torch.Tensor:
        """The whole current value (FSDP2's DTensor shards gathered through their own API)."""
        # Asked before `detach()`: a detached ZeRO-3 parameter loses the `ds_*` attributes that mark it, and is
        # then its empty local partition.
        if is_zero3_param(param):  # ZeRO-3 partitioned by zero.Init before the engine exists (attach time)
            return gathered_copy(param)
        param = param.detach()
        if _is_dtensor(param):
            return param.full_tensor()
        return param

    def scale_(self, param: torch.Tensor, factor: float) -> None:
        """``param <- factor · param``: elementwise, so on FSDP shards too, with the same factor on every rank."""
        param.mul_(factor)

    def interpolate_(self, param: torch.Tensor, reference: torch.Tensor, factor: float) -> None:
        """``param <- reference + factor · (param - reference)``."""
        reference = reference.to(param.device, torch.float32)
        if _is_dtensor(param):  # lay the reference out like the sharded parameter
            from torch.distributed.tensor import distribute_tensor

            reference = distribute_tensor(reference, param.device_mesh, param.placements)
        param.copy_(reference + factor * (param.detach().float() - reference))

    def set_(self, param: torch.Tensor, value: torch.Tensor) -> None:
        """``param <- value`` (the whole tensor; laid out like a sharded parameter). Used by the safety subspace."""
        value = value.to(param.device, param.dtype)
        if _is_dtensor(param):
            from torch.distributed.tensor import distribute_tensor

            value = distribute_tensor(value, param.device_mesh, param.placements)
        param.copy_(value)


class ZeroAccess(WeightAccess):
    """DeepSpeed ZeRO stage 1, 2 or 3: read the fp32 master, write master and module copy."""

    def __init__(self, stage: int) -> None:
        self.stage = stage

    def read(self, param: torch.Tensor) -> torch.Tensor:
        from deepspeed.utils import safe_get_full_fp32_param

        value = safe_get_full_fp32_param(param)
        if value is None:  # a trainable parameter the ZeRO optimizer does not step: nothing here can bound it
            raise RuntimeError(
                f"Slow Tuning found a trainable parameter of shape {zero_shape(param)} "
                f"without a DeepSpeed ZeRO-{self.stage} fp32 master copy; it cannot be bounded. Set `tau: null`."
            )
        return value

    def scale_(self, param: torch.Tensor, factor: float) -> None:
        self._write(param, self.read(param) * factor)

    def interpolate_(self, param: torch.Tensor, reference: torch.Tensor, factor: float) -> None:
        value = self.read(param)
        reference = reference.to(value.device, torch.float32)
        self._write(param, reference + factor * (value - reference))

    def set_(self, param: torch.Tensor, value: torch.Tensor) -> None:
        self._write(param, value.float())

    def _write(self, param: torch.Tensor, value: torch.Tensor) -> None:
        from deepspeed.utils import safe_set_full_fp32_param

        safe_set_full_fp32_param(param, value)  # what the next optimizer step continues from
        if is_zero3_param(param):
            from deepspeed.runtime.zero import GatheredParameters

            # Inside the context every rank holds the whole tensor; on exit rank 0's value is partitioned
            # back to all of them (the value is the same on every rank, so writing it everywhere is harmless).
            with GatheredParameters([param], modifier_rank=0):
                param.data.copy_(value.to(param.device, param.dtype))
        else:  # ZeRO-1/2: every rank holds the whole module tensor
            param.data.copy_(value.to(param.device, param.dtype))


def access_for(engine: object | None) -> WeightAccess:
    """The access for the engine that trains the model (``Trainer.deepspeed`` once training started), or the
    plain one when there is none yet."""
    if engine is None:
        return WeightAccess()
    stage = engine.zero_optimization_stage() if hasattr(engine, "zero_optimization_stage") else 0
    if stage in (1, 2, 3):
        return ZeroAccess(stage)
    raise ValueError(
        f"Slow Tuning supports DeepSpeed ZeRO stages 1, 2 and 3; got stage {stage}, whose optimizer keeps no "
        "fp32 master copy Slow Tuning can reach. Set `zero_optimization.stage` to 2 or 3, or `tau: null`."
    )
