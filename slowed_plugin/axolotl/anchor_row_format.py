"""The safety anchor under Axolotl: rows prompted and tokenized by Axolotl's own prompt strategy, and the step
count Axolotl fixed before the rows existed.

The anchor rows are written in the format of the recipe's first dataset (``type: alpaca`` and its styles, or
``type: chat_template``), tokenized by Axolotl's ``get_dataset_wrapper`` with that dataset's settings, filtered
and given packing columns by Axolotl's own ``handle_long_seq_in_dataset`` and ``process_datasets_for_packing``, so
that they are trained exactly like the recipe's rows (``train_on_inputs``, chat template, sample packing).
Axolotl computes ``max_steps`` from the dataset before the trainer exists; with replay rows appended it is
computed again (unless the recipe sets ``max_steps``), a change listed in :mod:`slowed_plugin.trainer.patches` and
undone with the rows. With sample packing the count is Axolotl's own (``calculate_total_num_steps``, the bins of its
multipack sampler). Without packing it is the trainer's (:func:`whole_epoch_steps`): Axolotl's formula there,
``ceil(rows * epochs / batch)``, runs the epochs together, while the trainer ends every epoch on a short step when
its micro-batches do not fill the last one; with 91 rows, micro-batches of 4 and accumulation 2 (the tiny recipe
with the default anchor) that is 23 steps for the trainer's 24, and training stopped at epoch 1.957.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ..anchor.answers import AnchorRow
from ..rules import anchor_dataset_type, unsupported_anchor_dataset
from ..trainer.patches import Patches
from ..trainer.safety_anchor import RowFormat


def axolotl_row_format(cfg: Any) -> Callable[[Any, Mapping[str, Any]], RowFormat]:
    """The row format for ``SLowEDCallback.anchor_row_format`` under the Axolotl config ``cfg``."""

    def make(trainer: Any, settings: Mapping[str, Any]) -> RowFormat:
        from axolotl.prompters import AlpacaPrompter
        from axolotl.utils.dict import DictDefault

        problem = unsupported_anchor_dataset(cfg)
        if problem is not None:
            raise ValueError(problem)
        base, style = anchor_dataset_type(cfg)
        dataset_config = DictDefault(dict(cfg["datasets"][0]))
        tokenizer = trainer.processing_class
        if base == "alpaca":
            prompter = AlpacaPrompter(style)

            def render(prompt: str) -> str:
                return "".join(prompter.build_prompt(prompt))

            def record(row: AnchorRow) -> dict[str, Any]:
                return {"instruction": row.prompt, "input": "", "output": row.answer}

            add_special_tokens = True  # Axolotl's alpaca strategy tokenizes the prompt with the BOS
        else:
            field = dataset_config.get("field_messages") or "messages"

            def render(prompt: str) -> str:
                user = [{"role": "user", "content": prompt}]
                return tokenizer.apply_chat_template(user, tokenize=False, add_generation_prompt=True)

            def record(row: AnchorRow) -> dict[str, Any]:
                turns = [{"role": "user", "content": row.prompt}, {"role": "assistant", "content": row.answer.strip()}]
                return {field: turns}

            add_special_tokens = False  # the rendered template holds its own special tokens

        def tokenize(rows: Sequence[AnchorRow]) -> Any:
            import datasets
            from axolotl.utils.data.utils import handle_long_seq_in_dataset
            from axolotl.utils.data.wrappers import get_dataset_wrapper
            from axolotl.utils.trainer import process_datasets_for_packing

            raw = datasets.Dataset.from_list([record(r) for r in rows])
            tokenized, _ = get_dataset_wrapper(dataset_config, tokenizer, cfg, base, raw, style)
            tokenized = handle_long_seq_in_dataset(tokenized, cfg.sequence_len, cfg)
            return process_datasets_for_packing(cfg, tokenized, None)[0]

        return RowFormat(render, add_special_tokens, tokenize)

    return make


def step_recount(cfg: Any, log: Any) -> Callable[[Patches, Any], None]:
    """An installer for ``SLowEDCallback.installers``: the step count of whole epochs over the training set with the
    replay rows (Axolotl's with sample packing, the trainer's without; see the module), written to
    ``trainer.args.max_steps`` through ``patches`` (undone with the rows); nothing when the recipe sets
    ``max_steps`` itself."""

    def install(patches: Patches, trainer: Any) -> None:
        from axolotl.utils.trainer import calculate_total_num_steps

        if cfg.get("max_steps"):
            return
        # Axolotl keeps the token counts of the dataset it measured; the mixed one is measured afresh.
        patches.set_item(cfg, "total_num_tokens", None)
        patches.set_item(cfg, "total_supervised_tokens", None)
        steps = int(calculate_total_num_steps(cfg, trainer.train_dataset))  # a float with sample packing
        source = "Axolotl's count"
        if not cfg.get("sample_packing"):
            source = "whole epochs, as the trainer counts them"
            args = trainer.args
            steps = whole_epoch_steps(
                len(trainer.train_dataset),
                args.per_device_train_batch_size,
                args.gradient_accumulation_steps,
                args.num_train_epochs,
                world_size=args.world_size,
                drop_last=args.dataloader_drop_last,
            )
        patches.replace(trainer.args, "max_steps", lambda _: steps)
        log.info(f"SLowED: safety anchor: {steps} optimizer steps with the anchor rows ({source}).")

    return install


def whole_epoch_steps(
    rows: int,
    micro_batch_size: int,
    gradient_accumulation_steps: int,
    num_epochs: float,
    world_size: int = 1,
    drop_last: bool = False,
) -> int:
    """Optimizer steps of ``num_epochs`` epochs over ``rows`` examples without sample packing, as transformers'
    ``Trainer`` counts them with ``max_steps=-1``: each process draws ``ceil(rows / (micro_batch_size * world_size))``
    micro-batches an epoch (``floor`` with ``drop_last``), and every epoch ends on an optimizer step even when its
    last accumulation is short."""
    per_process = micro_batch_size * world_size
    batches = rows // per_process if drop_last else -(-rows // per_process)
    per_epoch = max(-(-batches // gradient_accumulation_steps), 1)
    return math.ceil(num_epochs * per_epoch)
