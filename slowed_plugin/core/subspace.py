"""The safety-subspace projection (beyond the paper): keep weight changes off the directions that carry refusal.

Pure torch (and PEFT's layer types to find LoRA layers); knows nothing of trainers.

Refusal is carried by a few directions of the residual stream (Arditi et al., 2024): the difference of the mean
hidden states on harmful and on benign prompts. :func:`safety_directions` takes them, per residual stream
(``hidden_states[i]``: the stream entering decoder layer ``i``; the last one leaves the last layer), from the
starting model's hidden states at the last prompt token. :class:`SubspaceProjector` then keeps every weight change
from reading from or writing onto them:

    ΔW <- (I - P_out) ΔW (I - P_in)          P = U Uᵀ, U orthonormal (d x k)

where the input side is projected when the weight reads the residual stream entering its layer (q/k/v, gate/up)
and the output side when it writes onto the stream leaving it (o_proj, down_proj). For LoRA, ``ΔW = s · B @ A``
and the projection factors exactly: ``B <- (I - P_out) B`` (B's columns) and ``A <- A (I - P_in)`` (A's rows), in
place, so that ``save_pretrained`` writes the projected adapter. Any other trainable tensor (full fine-tuning) is
projected on ``W - W0`` against a copy of its start. Both sides are orthogonal projections, so the projection
never lengthens ΔW: applied before Slow Tuning's scaling onto the ball, the result satisfies both constraints
(the scaling multiplies ΔW by a number, which keeps its zero components zero).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .lora_factors import lora_factors
from .weight_access import WeightAccess, access_for, zero_shape

_PLAIN = WeightAccess()

# A weight's role in the residual stream, by the module's own name (the last part of its qualified name), in the
# architectures transformers ships: weights that read the stream entering their layer, and weights that write onto
# the stream leaving it. A name in neither set is refused (the projection cannot tell which side is the stream).
READS_STREAM = frozenset(
    {
        "q_proj",
        "k_proj",
        "v_proj",
        "qkv_proj",
        "query_key_value",
        "Wqkv",
        "wqkv",
        "gate_proj",
        "up_proj",
        "gate_up_proj",
        "dense_h_to_4h",
        "fc1",
        "w1",
        "w3",
    }
)
WRITES_STREAM = frozenset({"o_proj", "down_proj", "out_proj", "dense", "dense_4h_to_h", "fc2", "w2", "wo"})


def safety_directions(harmful: torch.Tensor, benign: torch.Tensor, count: int = 1) -> torch.Tensor:
    """Orthonormal directions (``d x count``, float64) of one stream from per-prompt hidden states (``n x d``).

    The first is the difference of the means, harmful minus benign, normalised. Further ones are the top right
    singular vectors of the per-prompt differences (each harmful state minus the benign mean) with the first
    direction removed: the other ways in which harmful prompts sit apart from benign ones. ValueError when the
    set would be empty (the two means coincide) or has fewer than ``count`` independent directions.
    """
    harmful, benign = harmful.double(), benign.double()
    if harmful.ndim != 2 or benign.ndim != 2 or harmful.shape[1] != benign.shape[1]:
        raise ValueError(
            f"hidden states must be n x d on both sides; got {tuple(harmful.shape)}, {tuple(benign.shape)}"
        )
    benign_mean = benign.mean(0)
    difference = harmful.mean(0) - benign_mean
    scale = max(float(harmful.norm(dim=1).max()), float(benign.norm(dim=1).max()), 1e-30)
    norm = float(difference.norm())
    if norm <= 1e-6 * scale:
        raise ValueError(
            "the safety direction set is empty: the mean hidden states of the harmful and benign prompts coincide "
            f"(||difference|| = {norm:.3g}); use harmful and benign prompts the starting model tells apart."
        )
    first = difference / norm
    if count == 1:
        return first[:, None]
    rest = harmful - benign_mean
    rest = rest - (rest @ first)[:, None] * first[None, :]
    _, singular, vh = torch.linalg.svd(rest, full_matrices=False)
    usable = int((singular > 1e-6 * max(float(singular[0]) if len(singular) else 0.0, 1e-30)).sum())
    if usable < count - 1:
        raise ValueError(
            f"the hidden states give {usable + 1} independent safety directions, fewer than the {count} asked; "
            "lower `directions` or give more harmful prompts."
        )
    basis = torch.cat([first[:, None], vh[: count - 1].T], dim=1)
    q, _ = torch.linalg.qr(basis)  # re-orthonormalise in float64 (the SVD's vectors are already nearly so)
    return q


def remove_left(matrix: torch.Tensor, u: torch.Tensor | None) -> torch.Tensor:
    """``(I - U Uᵀ) M`` in float64 (M's columns lose their components along U)."""
    m = matrix.double()
    return m if u is None else m - u @ (u.T @ m)


def remove_right(matrix: torch.Tensor, u: torch.Tensor | None) -> torch.Tensor:
    """``M (I - U Uᵀ)`` in float64 (M's rows lose their components along U)."""
    m = matrix.double()
    return m if u is None else m - (m @ u) @ u.T


def project_delta(delta: torch.Tensor, u_in: torch.Tensor | None, u_out: torch.Tensor | None) -> torch.Tensor:
    """``(I - P_out) ΔW (I - P_in)`` in float64 for a weight of shape ``out x in`` (a bias: ``out``)."""
    if delta.ndim == 1:
        return remove_left(delta[:, None], u_out)[:, 0]
    return remove_right(remove_left(delta, u_out), u_in)


@dataclass
class _Side:
    """The directions of the two sides of one weight (None: that side is not the residual stream)."""

    u_in: torch.Tensor | None
    u_out: torch.Tensor | None


class _LoraWeight:
    def __init__(self, name: str, lora_a: torch.Tensor, lora_b: torch.Tensor, side: _Side, embedding: bool) -> None:
        self.name, self.lora_a, self.lora_b, self.side, self.embedding = name, lora_a, lora_b, side, embedding

    def project(self, access: WeightAccess) -> tuple[float, float]:
        """Project in place; (||ΔW||², ||ΔW projected||²) up to the scaling, from the r x r Gram identity."""
        a, b = access.read(self.lora_a).double(), access.read(self.lora_b).double()
        # A PEFT embedding adapter is ΔE = (B A)ᵀ (vocab x d): the stream is B's row space as for a linear layer's
        # output side, and A's rows index the vocabulary (no stream there).
        new_b = remove_left(b, self.side.u_out)
        new_a = a if self.embedding else remove_right(a, self.side.u_in)
        before = float(((b.T @ b) * (a @ a.T)).sum().clamp_min(0))
        after = float(((new_b.T @ new_b) * (new_a @ new_a.T)).sum().clamp_min(0))
        if self.side.u_out is not None:
            access.set_(self.lora_b, new_b)
        if self.side.u_in is not None and not self.embedding:
            access.set_(self.lora_a, new_a)
        return before, after


class _DenseWeight:
    def __init__(self, name: str, param: torch.Tensor, reference: torch.Tensor, side: _Side) -> None:
        self.name, self.param, self.reference, self.side = name, param, reference, side

    def project(self, access: WeightAccess) -> tuple[float, float]:
        value = access.read(self.param).double()
        reference = self.reference.to(value.device, torch.float64)
        delta = value - reference
        new = project_delta(delta, self.side.u_in, self.side.u_out)
        access.set_(self.param, reference + new)
        return float(delta.pow(2).sum()), float(new.pow(2).sum())


@dataclass(frozen=True)
class SubspaceReport:
    """What one projection removed: per weight, the share ``||ΔW - projected|| / ||ΔW||`` (0 for ΔW = 0)."""

    max_removed: float
    mean_removed: float
    num_weights: int


def decoder_layers(model: nn.Module) -> tuple[str, int]:
    """The qualified name of the model's list of decoder layers and its length; ValueError without one."""
    config = getattr(model, "config", None)
    count = None
    for key in ("num_hidden_layers", "n_layer", "num_layers"):
        count = count or getattr(config, key, None)
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and count and len(module) == count:
            return name, count
    raise ValueError(
        "the safety subspace needs a model with a list of decoder layers (config.num_hidden_layers); "
        f"found none in {type(model).__name__}."
    )


class SubspaceProjector:
    """Finds the adapted weights of ``model`` and projects their changes off the safety directions.

    ``directions``: one orthonormal ``d x k`` tensor per residual stream, ``len(layers) + 1`` of them (stream
    ``i`` enters decoder layer ``i``). Build it at the start of training (LoRA adapters at ΔW = 0; full
    fine-tuning copies the initial trainable tensors to ``reference_device``). ``engine`` as for Slow Tuning:
    weights are then read and written through :mod:`.weight_access`.
    """

    def __init__(
        self,
        model: nn.Module,
        directions: Sequence[torch.Tensor],
        reference_device: str = "cpu",
        engine: Callable[[], object | None] | None = None,
    ) -> None:
        self.model = model
        self._engine = engine
        self.prefix, n_layers = decoder_layers(model)
        if len(directions) != n_layers + 1:
            raise ValueError(
                f"the safety subspace needs directions for {n_layers + 1} residual streams ({n_layers} decoder "
                f"layers + 1); got {len(directions)}."
            )
        self.directions = [d.detach().to("cpu", torch.float64) for d in directions]
        if all(d.shape[1] == 0 for d in self.directions):
            raise ValueError("the safety direction set is empty: no residual stream has a direction to project off.")
        self.hidden_size = int(self.directions[0].shape[0])
        self.reference_device = reference_device
        self.references: dict[str, torch.Tensor] = {}
        self.skipped: list[str] = []  # trainable tensors the projection does not reach (1-D gains), by name
        self._discover(first=True)
        if not self.lora and not self.dense:
            raise ValueError("the safety subspace found no adapted weight whose change it can project.")

    # ------------------------------------------------------------------ which weight, which side
    def _u(self, stream: int) -> torch.Tensor | None:
        """Stream ``stream``'s directions; None where it has none (nothing to project on that side)."""
        u = self.directions[stream]
        return u if u.shape[1] else None

    def _layer_of(self, module_name: str) -> int | None:
        match = re.match(re.escape(self.prefix) + r"\.(\d+)\.", module_name + ".") if self.prefix else None
        return int(match.group(1)) if match else None

    def _side(self, module_name: str, module: nn.Module, in_dim: int, out_dim: int) -> _Side:
        """The directions of each side of ``module_name``'s weight, or ValueError when it cannot be placed."""
        embeddings = self.model.get_input_embeddings() if hasattr(self.model, "get_input_embeddings") else None
        head = self.model.get_output_embeddings() if hasattr(self.model, "get_output_embeddings") else None
        last = module_name.rsplit(".", 1)[-1]
        layer = self._layer_of(module_name)
        # A LoRA layer wraps the module the model names as its embeddings or head.
        candidates = {id(module), id(getattr(module, "base_layer", module))}
        if embeddings is not None and candidates & {id(embeddings), id(getattr(embeddings, "base_layer", None))}:
            side = _Side(None, self._u(0))
            want = ("out", out_dim)
        elif head is not None and candidates & {id(head), id(getattr(head, "base_layer", None))}:
            side = _Side(self._u(len(self.directions) - 1), None)
            want = ("in", in_dim)
        elif layer is not None and last in READS_STREAM:
            side = _Side(self._u(layer), None)
            want = ("in", in_dim)
        elif layer is not None and last in WRITES_STREAM:
            side = _Side(None, self._u(layer + 1))
            want = ("out", out_dim)
        else:
            where = f"decoder layer {layer}" if layer is not None else "outside the decoder layers"
            raise ValueError(
                f"the safety subspace cannot reach {module_name} ({where}): it projects weights that read or write "
                f"the residual stream (inside a layer: {', '.join(sorted(READS_STREAM | WRITES_STREAM))}; and the "
                "embeddings and output head). Leave it out of target_modules (or frozen), or drop `safety_subspace`."
            )
        if want[1] != self.hidden_size:
            raise ValueError(
                f"the safety subspace cannot reach {module_name}: its {want[0]}put side has {want[1]} features, "
                f"the residual stream {self.hidden_size}."
            )
        return side

    def _discover(self, first: bool = False) -> None:
        """(Re)bind to the model's parameters (an engine may replace them after this projector was built)."""
        self.access = access_for(self._engine() if self._engine is not None else None)
        self.lora: list[_LoraWeight] = []
        owned: set[int] = set()
        modules = dict(self.model.named_modules())
        for f in lora_factors(
            self.model, "the safety subspace cannot project", "drop `safety_subspace`", "the safety subspace"
        ):
            in_dim, out_dim = zero_shape(f.lora_a)[1], zero_shape(f.lora_b)[0]
            side = self._side(f.module_name, f.module, in_dim, out_dim)
            self.lora.append(_LoraWeight(f.name, f.lora_a, f.lora_b, side, f.embedding))
            owned.update((id(f.lora_a), id(f.lora_b)))
        self.dense: list[_DenseWeight] = []
        skipped: list[str] = []
        for param_name, param in self.model.named_parameters():
            if not param.requires_grad or id(param) in owned:
                continue
            module_name, _, kind = param_name.rpartition(".")
            module = modules.get(module_name)
            shape = zero_shape(param)
            if kind == "bias" and isinstance(module, nn.Linear):
                side = self._side(module_name, module, module.in_features, module.out_features)
                if side.u_out is None:  # the bias of a weight that reads the stream adds nothing to it
                    skipped.append(param_name)
                    continue
            elif len(shape) == 2 and kind == "weight":
                in_dim, out_dim = (shape[0], shape[1]) if isinstance(module, nn.Embedding) else (shape[1], shape[0])
                side = self._side(module_name, module, in_dim, out_dim)
            else:  # norm gains and other 1-D tensors act elementwise: no ΔW (I - P) form to project
                skipped.append(param_name)
                continue
            if first:
                self.references[param_name] = self.access.read(param).to(
                    torch.device("cpu") if self.reference_device == "cpu" else param.device, copy=True
                )
            if isinstance(module, nn.Embedding):  # E is vocab x d: its rows are written onto the stream
                side = _Side(side.u_out, None)
            self.dense.append(_DenseWeight(param_name, param, self.references[param_name], side))
        self.skipped = skipped

    @property
    def weights(self) -> list[_LoraWeight | _DenseWeight]:
        return [*self.lora, *self.dense]

    @torch.no_grad()
    def project(self) -> SubspaceReport:
        """Project every adapted weight's change in place; the share of each change that was removed."""
        self._discover()
        shares = []
        for weight in self.weights:
            before, after = weight.project(self.access)
            # The removed part is orthogonal to the kept one (two orthogonal projections), so its squared norm is
            # the difference of the squared norms.
            shares.append(0.0 if before <= 0 else max(0.0, 1.0 - after / before) ** 0.5)
        return SubspaceReport(
            max_removed=max(shares, default=0.0),
            mean_removed=sum(shares) / max(1, len(shares)),
            num_weights=len(shares),
        )

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.references)


def directions_from_states(
    harmful: Mapping[int, torch.Tensor] | Sequence[torch.Tensor],
    benign: Mapping[int, torch.Tensor] | Sequence[torch.Tensor],
    count: int,
) -> list[torch.Tensor]:
    """:func:`safety_directions` for each stream (``harmful[i]``: ``n x d`` states of stream ``i``).

    A stream where the two means coincide gets no direction (``d x 0``): the embeddings' stream at the last prompt
    token, when every prompt ends with the same token (a chat template's assistant header, a question mark), holds
    that token's embedding alone. ValueError when no stream has one (the direction set is empty).
    """
    out = []
    for i in range(len(harmful)):
        try:
            out.append(safety_directions(harmful[i], benign[i], count))
        except ValueError as error:
            if "is empty" not in str(error):
                raise ValueError(f"residual stream {i}: {error}") from None
            out.append(torch.zeros(harmful[i].shape[1], 0, dtype=torch.float64))
    if all(u.shape[1] == 0 for u in out):
        raise ValueError(
            "the safety direction set is empty: in every residual stream the mean hidden states of the harmful and "
            "benign prompts coincide; use harmful and benign prompts the starting model tells apart."
        )
    return out
