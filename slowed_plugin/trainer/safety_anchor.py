"""The safety anchor on a ``transformers.Trainer``: its rows, built once, and the two ways they act.

When SLowED attaches (the trainer is built, training has not started) the starting model (adapters off) answers
the anchor prompts greedily; the answers are cached beside the output (:mod:`slowed_plugin.anchor.answers`). A
row format (:class:`RowFormat`) tokenizes the rows through the trainer's own data preparation: TRL's
``SFTTrainer._prepare_dataset`` here, Axolotl's prompt strategy in :mod:`slowed_plugin.axolotl.anchor_row_format`. Then:

- ``replay``: the tokenized rows are appended to the training set, so the trainer's sampler shuffles them in and
  each one reaches the loss once per epoch.
- ``gradient``: the rows stay out of the loss; before every optimizer step the accumulated gradient is projected
  against the gradient of the plain next-token loss on a batch of them (:mod:`slowed_plugin.anchor.gradient`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..anchor.answers import (
    AnchorRow,
    cache_key,
    cache_path,
    draw_prompts,
    generate_rows,
    read_cache,
    refusal_share,
    write_cache,
)
from ..anchor.gradient import project_conflicting
from ..anchor.settings import replay_row_count
from ..log import get_logger
from .private_api import PREPARE_DATASET, require, skips_dataset_preparation

logger = get_logger()

# The settings the answers depend on (the cache key's); the others only decide how the rows are used.
_GENERATION_KEYS = ("max_new_tokens", "batch_size", "use_chat_template")


@dataclass
class RowFormat:
    """How one framework prompts and tokenizes the anchor rows: ``render`` a prompt for generation (with whether
    the tokenizer should add its special tokens to that text), and ``tokenize`` rows into training examples as the
    trainer's own data preparation does."""

    render: Callable[[str], str]
    add_special_tokens: bool
    tokenize: Callable[[Sequence[AnchorRow]], Any]


def trl_row_format(trainer: Any, settings: Mapping[str, Any]) -> RowFormat:
    """Rows in the training set's own format through ``SFTTrainer._prepare_dataset`` (chat template, completion
    mask, truncation and packing exactly as the training set got them).

    The format is read from the raw columns TRL keeps beside the tokens: ``messages`` or a conversational
    ``prompt``/``completion`` (prompted through the chat template), a plain ``prompt``/``completion``, or ``text``
    (both prompted raw; ``use_chat_template: true`` renders a text row's prompt through the chat template). A set
    TRL packed keeps none of them, so ``use_chat_template`` must say which (rows as prompt and completion).
    """
    from ..evaluation.generation import chat_prompts

    if not hasattr(trainer, PREPARE_DATASET.name):
        raise ValueError(
            f"`safety_anchor` needs TRL's SFTTrainer (its dataset preparation tokenizes the anchor rows) or Axolotl; "
            f"got {type(trainer).__name__}."
        )
    if skips_dataset_preparation(trainer):
        raise ValueError(
            "`safety_anchor` needs TRL's dataset preparation, and this trainer skips it "
            "(`dataset_kwargs={'skip_prepare_dataset': True}`); remove that setting or the anchor."
        )
    prepare = require(trainer, PREPARE_DATASET)
    tokenizer = trainer.processing_class
    layout, conversational = _trl_layout(trainer.train_dataset)
    forced = settings["use_chat_template"]
    if layout == "packed":
        if forced is None:
            raise ValueError(
                "`safety_anchor.use_chat_template` must be set (true or false) when TRL packs the training set: "
                "packing drops the columns that show whether its rows are conversational, and the anchor rows must "
                "be in the same format (true: through the chat template; false: plain prompt and completion)."
            )
        conversational = forced
    elif forced is not None and layout == "text":
        conversational = forced  # a text row is whatever the prompt was rendered as, plus the answer
    elif forced is not None and forced != conversational:
        kind = "conversational" if conversational else "plain (no chat template)"
        raise ValueError(
            f"`safety_anchor.use_chat_template` is {forced!r}, but the training set's {layout} rows are {kind}, and "
            "TRL prepares the anchor rows the same way; leave it null (follow the training set)."
        )
    if conversational:
        chat_prompts(tokenizer, ["x"], True)  # one clear error when the tokenizer has no template

    def render(prompt: str) -> str:
        return chat_prompts(tokenizer, [prompt], conversational)[0][0]

    def record(row: AnchorRow) -> dict[str, Any]:
        if conversational:
            user, assistant = (
                {"role": "user", "content": row.prompt},
                {"role": "assistant", "content": row.answer.strip()},
            )
            return (
                {"messages": [user, assistant]}
                if layout == "messages"
                else {"prompt": [user], "completion": [assistant]}
            )
        if layout == "text":
            return {"text": row.text + row.answer}
        return {"prompt": row.prompt, "completion": row.answer}  # the continuation exactly as generated

    def tokenize(rows: Sequence[AnchorRow]) -> Any:
        import datasets

        dataset = datasets.Dataset.from_list([record(r) for r in rows])
        args = trainer.args
        # Keywords: a reordered private signature then fails loudly instead of binding the wrong arguments.
        return prepare(
            dataset=dataset,
            processing_class=tokenizer,
            args=args,
            packing=args.packing,
            formatting_func=None,
            dataset_name="slowed_anchor",
        )

    return RowFormat(render, not conversational, tokenize)


def _trl_layout(dataset: Any) -> tuple[str, bool]:
    """(``messages`` | ``prompt_completion`` | ``text``, whether conversational) of a training set TRL prepared."""
    columns = getattr(dataset, "column_names", None) or []
    if "messages" in columns:
        return "messages", True
    if "prompt" in columns and "completion" in columns:
        return "prompt_completion", not isinstance(dataset[0]["prompt"], str)
    if "text" in columns:
        return "text", False
    if "input_ids" in columns and "seq_lengths" in columns:  # packed by TRL (bfd): the raw columns are gone
        return "packed", False
    raise ValueError(
        "`safety_anchor` writes its rows in the training set's format, and this one has none TRL names (columns "
        f"{columns}; expected `messages`, `prompt` + `completion`, or `text`). Train from such a dataset, or drop "
        "the anchor."
    )


class SafetyAnchor:
    """The anchor of one trainer: ``rows`` (the starting model's answers), their tokenized ``dataset``, and the
    gradient mode's step rule. Built by :meth:`build` when SLowED attaches."""

    def __init__(self, settings: Mapping[str, Any], log: Any = logger) -> None:
        self.settings = dict(settings)
        self.log = log
        self.mode: str = self.settings["mode"]
        self.rows: list[AnchorRow] = []
        self.dataset: Any = None
        self.refusal_share: float | None = None
        self.generation_seconds = 0.0
        self.cached = False
        self.cache_file: str | None = None
        self.projected_steps = 0
        self.constrained_steps = 0
        self.kl_values: list[float] = []  # KL mode: the term at each optimizer step (before its update)

    # ------------------------------------------------------------------ building
    def prompts(self) -> tuple[list[str], list[str]]:
        from ..evaluation.prompts import load_prompts

        column = self.settings["prompt_column"]
        harmful = load_prompts(self.settings["prompts"], column=column)
        benign = self.settings["benign_prompts"]
        return harmful, (load_prompts(benign, column=column) if benign is not None else [])

    def build(self, trainer: Any, row_format: RowFormat) -> None:
        """Generate (or read from the cache) the rows for ``trainer`` and tokenize them with ``row_format``."""
        harmful, benign = self.prompts()
        count = None
        if self.mode == "replay":
            count = replay_row_count(_row_count(trainer.train_dataset), self.settings["ratio"])
        drawn = draw_prompts(harmful, benign, count, self.settings["seed"])
        generation = {k: self.settings[k] for k in _GENERATION_KEYS}
        texts = [(row_format.render(p), kind) for p, kind in drawn]
        key = cache_key(trainer.model, texts, generation)
        self.cache_file = cache_path(trainer.args.output_dir, key) if self.settings["cache"] else None
        # The main process answers first and writes the cache; the others then read it, so every rank trains on the
        # same rows (and a resumed run on the rows of the first one).
        with trainer.accelerator.main_process_first():
            rows = read_cache(self.cache_file, key) if self.cache_file else None
            self.cached = rows is not None
            if rows is None:
                started = time.perf_counter()
                rows = generate_rows(
                    trainer.model,
                    trainer.processing_class,
                    drawn,
                    row_format.render,
                    generation,
                    row_format.add_special_tokens,
                )
                self.generation_seconds = time.perf_counter() - started
                if self.cache_file and trainer.accelerator.is_main_process:
                    write_cache(self.cache_file, key, rows, generation)
        self.rows = rows
        self.refusal_share = refusal_share(rows)
        self.dataset = row_format.tokenize(rows)
        if trainer.accelerator.is_main_process:
            self._announce()

    def _announce(self) -> None:
        n_harmful = sum(r.kind == "harmful" for r in self.rows)
        source = f"read from {self.cache_file}" if self.cached else f"generated in {self.generation_seconds:.1f} s"
        use = (
            f"mixed into the training set ({self.settings['ratio']:g} of its rows)"
            if self.mode == "replay"
            else "as the gradient constraint's reference"
            if self.mode == "gradient"
            else f"as the KL term's reference (weight {self.settings['ratio'] / (1 - self.settings['ratio']):.3g})"
        )
        share = "n/a" if self.refusal_share is None else f"{self.refusal_share:.0%}"
        self.log.info(
            "SLowED: safety anchor: %d rows (%d harmful, %d benign) answered by the starting model, %s, %s; "
            "the refusal judge calls %s of the harmful answers refusals.",
            len(self.rows),
            n_harmful,
            len(self.rows) - n_harmful,
            source,
            use,
            share,
        )
        minimum = self.settings["min_refusal_share"]
        if self.refusal_share is not None and self.refusal_share < minimum:
            self.log.warning(
                "SLowED: safety anchor: only %.0f%% of the starting model's harmful answers are refusals "
                "(min_refusal_share=%g): an anchor preserves what the model already does, so this one preserves "
                "little safety. Check the prompts' format (use_chat_template) or start from an aligned model.",
                100 * self.refusal_share,
                minimum,
            )

    def mixed(self, train_dataset: Any) -> Any:
        """Replay: ``train_dataset`` with the tokenized rows appended (columns of the training set)."""
        import datasets

        anchor = self.dataset
        missing = [c for c in train_dataset.column_names if c not in anchor.column_names]
        if missing:
            raise ValueError(
                f"`safety_anchor`: the training set has columns {missing} that the anchor rows do not get from the "
                f"trainer's data preparation (anchor columns: {anchor.column_names}); prepare the training set "
                "with the trainer, or use `mode: gradient`."
            )
        anchor = anchor.select_columns(train_dataset.column_names).cast(train_dataset.features)
        return datasets.concatenate_datasets([train_dataset, anchor])

    # ------------------------------------------------------------------ gradient mode
    def constrain(self, trainer: Any, step: int) -> bool:
        """Project the accumulated gradient of ``trainer.model`` against the anchor batch of ``step``; True when it
        was projected. Called right before the optimizer step (after clipping)."""
        model = trainer.model
        params = [p for p in model.parameters() if p.requires_grad and p.grad is not None]
        if not params:
            return False
        grads = [p.grad for p in params]
        for p in params:
            p.grad = None
        try:
            loss = self._replay_loss(trainer, self._batch(trainer, step))
            loss.backward()  # the unwrapped module: no gradient all-reduce (every rank uses the same batch)
            reference = [
                p.grad if p.grad is not None else torch.zeros_like(g) for p, g in zip(params, grads, strict=True)
            ]
        finally:
            for p, g in zip(params, grads, strict=True):
                p.grad = g
        self.constrained_steps += 1
        projected = project_conflicting(grads, reference)
        self.projected_steps += projected
        return projected

    def _batch(self, trainer: Any, step: int) -> dict[str, torch.Tensor]:
        """The ``step``-th batch of a fixed cycle through the rows: it depends on the step alone, so a resumed
        run and every rank see the same batches."""
        size = self.settings["replay_batch_size"] or trainer.args.per_device_train_batch_size
        n = len(self.dataset)
        size = min(size, n)
        start = step * size
        indices, orders = [], {}
        for position in range(start, start + size):
            cycle, offset = divmod(position, n)
            if cycle not in orders:  # one permutation per pass through the rows, seeded by the pass
                seed = self.settings["seed"] * 100_003 + cycle
                orders[cycle] = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
            indices.append(int(orders[cycle][offset]))
        features = [self.dataset[i] for i in indices]
        batch = trainer.data_collator(features)
        device = next(trainer.model.parameters()).device
        return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}

    # ------------------------------------------------------------------ KL mode
    def kl_step(self, trainer: Any, step: int) -> float:
        """Add the gradient of ``ratio/(1-ratio) · KL(teacher || student)`` on the anchor batch of ``step`` to the
        parameters' gradients. Called when an optimizer step begins, before its micro-batches: their gradients
        accumulate onto it, and clipping then sees the sum, as if the term were part of the loss."""
        from ..anchor.answers import adapters_disabled
        from ..anchor.kl import kl_weight, token_kl

        model = trainer.model
        if not hasattr(model, "disable_adapter"):
            raise ValueError(
                "`safety_anchor.mode: kl` needs PEFT adapters (its teacher is the model with the adapters off); "
                "for full fine-tuning use `replay` or `gradient`."
            )
        if getattr(trainer.args, "fp16", False):  # the term's backward would bypass the fp16 loss scaler
            raise ValueError("`safety_anchor.mode: kl` does not support `fp16=True`; use bf16 or fp32.")
        batch = self._batch(trainer, step)
        labels = batch.pop("labels")
        batch.pop("num_items_in_batch", None)
        with torch.no_grad(), adapters_disabled(model):
            teacher = model(**batch).logits.detach()
        with trainer.compute_loss_context_manager():
            student = model(**batch).logits
        kl = token_kl(student, teacher, labels)
        (kl_weight(self.settings["ratio"]) * kl).backward()  # the unwrapped module: every rank uses the same batch
        self.kl_values.append(float(kl.detach()))
        return self.kl_values[-1]

    @staticmethod
    def _replay_loss(trainer: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        # The plain next-token loss on the anchor rows, by the model's own loss function: no labels reach the
        # forward, so neither SLowED's masking nor a custom loss changes it.
        model = trainer.model
        labels = batch.pop("labels")
        batch.pop("num_items_in_batch", None)
        causal = model.get_base_model() if hasattr(model, "get_base_model") else model
        with trainer.compute_loss_context_manager():
            outputs = model(**batch)
            return causal.loss_function(outputs.logits, labels, vocab_size=causal.config.vocab_size)


def _row_count(dataset: Any) -> int:
    """Training examples in ``dataset``: rows, or for a set TRL packed (bfd), the examples inside its packs."""
    if "seq_lengths" in (getattr(dataset, "column_names", None) or []):
        return sum(len(lengths) for lengths in dataset["seq_lengths"])
    try:
        return len(dataset)
    except TypeError:
        raise ValueError(
            "`safety_anchor` with `mode: replay` needs a training set of known length (a map-style dataset) to "
            "take its share of; use `mode: gradient` with a streaming dataset."
        ) from None
