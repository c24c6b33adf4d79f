"""Slow Tuning: keep every weight change inside a Frobenius ball of radius tau around the start.

Pure torch (and PEFT's layer types to find LoRA layers); knows nothing of trainers.

- LoRA layer: ``ΔW = s · B @ A`` with ``s = layer.scaling[adapter]`` (``alpha / r``, or
  ``alpha / sqrt(r)`` with rsLoRA). Its norm comes from the r x r Gram identity
  ``||B A||_F^2 = sum((BᵀB) ∘ (A Aᵀ))``, in float32; ΔW is never materialised. The projection
  multiplies B by ``c = tau / ||ΔW||_F`` in place, so that ``save_pretrained`` (which stores
  lora_A/lora_B, not the runtime ``scaling``) writes the projected adapter. Scaling B alone
  is exact in one multiply; A keeps its norm, so the scale of B's gradient is unchanged.
- Any other trainable tensor (full fine-tuning, PEFT ``modules_to_save``): ``ΔW = W - W0``
  against a copy of the initial tensor, projected as ``W <- W0 + c · (W - W0)``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ..validate import check_choice, check_tau
from .lora_factors import lora_factors
from .weight_access import WeightAccess, access_for

_PLAIN = WeightAccess()

# Relative slack under which a norm counts as already on the ball (float32 rounding of tau / n).
_ROUNDING = 1e-6
# Second-pass target for scaled weights whose stored result rounds coarser than c·||ΔW|| (bf16/fp16
# adapters, 2^-8 relative; dense W0 + c·ΔW, rounded relative to W), which can push a just-projected
# norm over tau: land at tau * (1 - margin) instead.
_LOW_PRECISION_MARGIN = 2**-7
_MAX_RETRIES = 3


@dataclass(frozen=True)
class ProjectionReport:
    """What one projection pass found and did."""

    max_norm: float  # largest ||ΔW||_F before projection (the global norm for tau_scope=global)
    num_projected: int  # weights that were scaled
    min_scale: float  # smallest factor applied (1.0 when nothing was scaled)
    num_weights: int  # weights under Slow Tuning


def _full(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor: FSDP2 shards parameters as DTensors, gathered through their own API."""
    return _PLAIN.read(tensor)


def lora_delta_norm(lora_a: torch.Tensor, lora_b: torch.Tensor, scaling: float) -> torch.Tensor:
    """``||scaling · B @ A||_F`` in float32, from two r x r products."""
    lora_a, lora_b = _full(lora_a), _full(lora_b)
    a = lora_a.float().reshape(lora_a.shape[0], -1)
    b = lora_b.float().reshape(lora_b.shape[0], -1)
    gram = ((b.T @ b) * (a @ a.T)).sum()
    # Rounding can leave a tiny negative value when ΔW is (nearly) zero.
    return gram.clamp_min(0).sqrt() * abs(scaling)


class _LoraWeight:
    """One active adapter of one PEFT LoRA layer."""

    def __init__(
        self, name: str, lora_a: torch.Tensor, lora_b: torch.Tensor, scaling: float, access: WeightAccess = _PLAIN
    ) -> None:
        self.name, self.lora_a, self.lora_b, self.scaling, self.access = name, lora_a, lora_b, scaling, access

    def norm(self) -> torch.Tensor:
        return lora_delta_norm(self.access.read(self.lora_a), self.access.read(self.lora_b), self.scaling)

    @property
    def scale_is_exact(self) -> bool:
        # B·c in float32 rounds each element by 2^-24 relative, so ||ΔW|| becomes c·||ΔW|| far inside the
        # 1e-6 slack; bf16/fp16 round by up to 2^-8 and must be measured again.
        return self.lora_b.dtype in (torch.float32, torch.float64)

    def scale_(self, factor: float) -> None:
        self.access.scale_(self.lora_b, factor)


class _DenseWeight:
    """A trainable tensor and the copy of its initial value."""

    def __init__(self, name: str, param: torch.Tensor, reference: torch.Tensor, access: WeightAccess = _PLAIN) -> None:
        self.name, self.param, self.reference, self.access = name, param, reference, access

    def norm(self) -> torch.Tensor:
        param = self.access.read(self.param)
        return torch.linalg.vector_norm(param.float() - self.reference.to(param.device, torch.float32))

    # W0 + c·(W - W0) is rounded relative to W, not to the (much smaller) ΔW, in any dtype.
    scale_is_exact = False

    def scale_(self, factor: float) -> None:
        self.access.interpolate_(self.param, self.reference, factor)


def _lora_weights(model: nn.Module, access: WeightAccess = _PLAIN) -> tuple[list[_LoraWeight], set[int]]:
    """Active LoRA adapters of ``model`` and the ids of their A/B parameters."""
    weights: list[_LoraWeight] = []
    owned: set[int] = set()
    for f in lora_factors(model, "Slow Tuning cannot bound", "set `tau: null`", "Slow Tuning"):
        weights.append(_LoraWeight(f.name, f.lora_a, f.lora_b, float(f.module.scaling[f.adapter]), access))
        owned.update((id(f.lora_a), id(f.lora_b)))
    return weights, owned


def _check_supported_peft(model: nn.Module) -> None:
    config = getattr(model, "peft_config", None)
    if not isinstance(config, dict):
        return
    for name, adapter_config in config.items():
        peft_type = str(getattr(adapter_config, "peft_type", "LORA")).split(".")[-1]
        if peft_type != "LORA":
            raise ValueError(
                f"Slow Tuning supports LoRA adapters and full fine-tuning; adapter {name!r} is {peft_type}. "
                "Use a LoRA adapter or set `tau: null`."
            )


class SlowTuner:
    """Finds the weights under Slow Tuning in ``model`` and projects them onto the tau-ball.

    Build it at the start of training: LoRA adapters must then be at ΔW = 0 (otherwise the ball
    around the start cannot be reached by scaling B within rank r, and we refuse rather than
    approximate), and full fine-tuning copies the initial trainable tensors to ``reference_device``.

    ``engine``: returns the DeepSpeed engine training the model once there is one (None before, or without
    DeepSpeed); weights are then read from and written to its fp32 master copy (:mod:`.weight_access`).
    """

    def __init__(
        self,
        model: nn.Module,
        tau: float,
        scope: str = "layer",
        reference_device: str = "cpu",
        check_start: bool = True,
        engine: Callable[[], object | None] | None = None,
    ) -> None:
        # The config's own checks (one wording everywhere); SLowEDConfigError is a ValueError.
        self.tau = check_tau(tau, optional=False)
        self.scope = check_choice("tau_scope", scope, ("layer", "global"))
        self.model = model
        self._engine = engine
        _check_supported_peft(model)
        self._discover()
        if check_start:
            for weight in self.lora:
                norm = float(weight.norm())
                if norm != 0.0:
                    init = _init_lora_weights(model)
                    raise ValueError(
                        f"Slow Tuning needs LoRA adapters that start at ΔW = 0; {weight.name} starts at "
                        f"||ΔW||_F = {norm:.3g} (init_lora_weights={init!r}). PiSSA, OLoRA, LoftQ, CorDA and "
                        "loaded adapters start elsewhere: use init_lora_weights=True or 'gaussian', or set `tau: null`."
                    )
        self.references = {
            w.name: w.access.read(w.param).to(_device(reference_device, w.param), copy=True) for w in self.dense
        }
        self._discover()
        if not self.lora and not self.dense:
            raise ValueError("Slow Tuning found no trainable weights in the model.")

    def _discover(self) -> None:
        """(Re)bind to the model's current parameters by name. Engines such as FSDP2 replace parameter
        objects when they wrap the model, after this tuner was built; a stale reference would project
        tensors that no longer train. The engine, too, exists only once training starts (DeepSpeed wraps the
        model after this tuner was built), so how weights are read and written is decided here as well."""
        self.access = access_for(self._engine() if self._engine is not None else None)
        self.lora, owned = _lora_weights(self.model, self.access)
        references = getattr(self, "references", {})
        self.dense = [
            _DenseWeight(name, param, references.get(name), self.access)
            for name, param in self.model.named_parameters()
            if param.requires_grad and id(param) not in owned
        ]

    @property
    def weights(self) -> list[_LoraWeight | _DenseWeight]:
        return [*self.lora, *self.dense]

    @torch.no_grad()
    def norms(self) -> torch.Tensor:
        """``||ΔW||_F`` of every weight, float32, in the order of :attr:`weights`."""
        self._discover()
        return self._measure(self.weights)

    @staticmethod
    def _measure(weights: list[_LoraWeight | _DenseWeight]) -> torch.Tensor:
        return torch.stack([w.norm().to("cpu") for w in weights]) if weights else torch.zeros(0)

    @torch.no_grad()
    def project(self) -> ProjectionReport:
        """Scale every weight change whose norm exceeds tau back onto the ball (in place).

        One norm pass: scaling ΔW by c makes its norm c·||ΔW||, so the norms after the projection follow
        from the factors. Only scaled weights whose stored result rounds coarser than that (bf16/fp16
        adapters, and W0 + c·ΔW of dense weights) are measured again; they aim a little inside the ball.
        """
        norms = self.norms()
        weights = self.weights
        factors = self._factors(norms)
        max_norm = float(torch.linalg.vector_norm(norms)) if self.scope == "global" else float(norms.max())
        scaled = [f for f in factors if f < 1.0]
        self._scale(factors, weights)
        for _ in range(_MAX_RETRIES):
            norms = norms * torch.tensor(factors, dtype=norms.dtype)
            recheck = [i for i, f in enumerate(factors) if f < 1.0 and not weights[i].scale_is_exact]
            if not recheck:
                break
            norms[recheck] = self._measure([weights[i] for i in recheck])
            factors = self._factors(norms, margin=_LOW_PRECISION_MARGIN)
            if all(f == 1.0 for f in factors):
                break
            self._scale(factors, weights)
        return ProjectionReport(
            max_norm=max_norm, num_projected=len(scaled), min_scale=min(scaled, default=1.0), num_weights=len(norms)
        )

    def _factors(self, norms: torch.Tensor, margin: float = 0.0) -> list[float]:
        # A weight projected earlier sits at tau up to float rounding; rescaling it again by
        # 1 - 1e-7 would change nothing but its bits, so only norms beyond that rounding count.
        limit = self.tau * (1 + _ROUNDING)
        target = self.tau * (1 - margin)
        if self.scope == "global":
            total = float(torch.linalg.vector_norm(norms))
            return [target / total if total > limit else 1.0] * len(norms)
        return [target / n if n > limit else 1.0 for n in norms.tolist()]

    def _scale(self, factors: list[float], weights: list[_LoraWeight | _DenseWeight] | None = None) -> None:
        for weight, factor in zip(self.weights if weights is None else weights, factors, strict=True):
            if factor < 1.0:
                weight.scale_(factor)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The initial values of the dense weights (what a resumed run needs to project the same)."""
        return dict(self.references)

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if set(state) != set(self.references):
            missing = sorted(set(self.references) - set(state))[:3]
            raise ValueError(f"Slow Tuning state does not match this model (missing e.g. {missing}).")
        for name, reference in self.references.items():
            self.references[name] = state[name].to(reference.device, reference.dtype)
        self._discover()


def _device(reference_device: str, param: torch.Tensor) -> torch.device:
    return torch.device("cpu") if reference_device == "cpu" else param.device


def _init_lora_weights(model: nn.Module) -> object:
    config = getattr(model, "peft_config", None)
    if isinstance(config, dict) and config:
        return getattr(next(iter(config.values())), "init_lora_weights", None)
    return None


def _trainable(model: nn.Module) -> tuple[list[_LoraWeight], list[tuple[str, torch.Tensor]]]:
    """The active LoRA adapters, and the other trainable tensors by name."""
    lora, owned = _lora_weights(model)
    return lora, [(n, p) for n, p in model.named_parameters() if p.requires_grad and id(p) not in owned]


def start_weights(model: nn.Module, device: str = "cpu") -> dict[str, torch.Tensor]:
    """Copies of the trainable tensors that are not LoRA factors (full fine-tuning, ``modules_to_save``),
    by parameter name: the start :func:`delta_norms` measures them against. Empty for a LoRA-only model."""
    return {name: _full(param).to(_device(device, param), copy=True) for name, param in _trainable(model)[1]}


@torch.no_grad()
def delta_norms(model: nn.Module, start: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """``||ΔW||_F`` (float32, on the CPU) of every weight under training, by the names :class:`SlowTuner` uses,
    LoRA adapters first: ``module[adapter]`` from the Gram identity (ΔW never materialised), any other trainable
    tensor against ``start[name]``, its value at the start (:func:`start_weights`, taken then).

    What Slow Tuning bounds, read without building a tuner (which checks that LoRA starts at zero and copies the
    dense weights itself). Raises, as the tuner does, for adapters whose ΔW is not ``scaling · B @ A`` (DoRA,
    ``lora_bias``) and when a trainable non-LoRA tensor has no start value.
    """
    start = start or {}
    lora, dense = _trainable(model)
    missing = [name for name, _ in dense if name not in start]
    if missing:
        raise ValueError(
            f"delta_norms needs the start value of every trainable tensor that is not a LoRA factor; "
            f"missing {missing[:3]} (take `start_weights(model)` before training)."
        )
    weights = [*lora, *(_DenseWeight(name, param, start[name]) for name, param in dense)]
    return {w.name: w.norm().to("cpu") for w in weights}
