"""Training rows to ``(input_ids, labels)`` the way TRL's ``SFTTrainer`` prepares its dataset (trl 1.9,
``SFTTrainer._prepare_dataset``).

TRL's own steps are closures inside that private trainer method (``add_eos``, ``tokenize_fn``,
``build_labels``, ``truncate``) and need a trainer to run, so this module repeats them, as small as stays
faithful, and takes from TRL what it exposes: ``is_conversational``, ``is_conversational_from_value`` and
``maybe_convert_to_chatml``. What it leaves out because the inspector has no trainer settings: a
``chat_template`` or ``eos_token`` set in ``SFTConfig``, ``assistant_only_loss``, ``completion_only_loss=False``,
``tools``/``chat_template_kwargs`` columns and packing.
"""

from __future__ import annotations

import copy
from typing import Any


def _ids(encoded: Any) -> list[int]:
    if isinstance(encoded, dict) or hasattr(encoded, "keys"):
        encoded = encoded["input_ids"]
    return list(encoded)


def _tokenize(tokenizer: Any, content: str | list, **chat_kwargs: Any) -> list[int]:
    # TRL's private `trl.data_utils._tokenize`: message lists through the chat template, text through the tokenizer.
    if isinstance(content, list):
        return _ids(tokenizer.apply_chat_template(content, tokenize=True, **chat_kwargs))
    return _ids(tokenizer(content))


def encode_example(tokenizer: Any, row: Any, max_length: int | None = None) -> tuple[list[int], list[int]]:
    """``(input_ids, labels)`` of one training row, labels -100 where the trainer does not train.

    Rows: ``{"prompt", "completion"}`` as strings (completion only) or as message lists (chat
    template, completion only); ``{"messages"}`` or ShareGPT ``{"conversations"}`` (chat template, every
    token); ``{"text"}`` or a plain string (every token). An EOS token ends non-conversational text as TRL
    adds it.
    """
    from trl import is_conversational, is_conversational_from_value, maybe_convert_to_chatml

    from ..core.masking import IGNORE_INDEX

    if isinstance(row, str):
        row = {"text": row}
    if not isinstance(row, dict):
        raise ValueError(
            f"An example must be a string or an object with prompt/completion, messages or text; got {row!r}."
        )
    # TRL converts ShareGPT rows and appends EOS in place; the caller's row stays as given.
    row = maybe_convert_to_chatml(copy.deepcopy(row)) if is_conversational_from_value(row) else dict(row)
    conversational = is_conversational(row)
    eos = tokenizer.eos_token or ""
    if not conversational and eos:
        for key in ("text", "completion"):
            if isinstance(row.get(key), str) and not row[key].endswith(eos):
                row[key] += eos
                break
    if "prompt" in row and "completion" in row:
        prompt_ids = _tokenize(tokenizer, row["prompt"], **({"add_generation_prompt": True} if conversational else {}))
        full = _tokenize(tokenizer, row["prompt"] + row["completion"])
        labels = [IGNORE_INDEX] * len(prompt_ids) + full[len(prompt_ids) :]
    elif "messages" in row or "text" in row:
        full = _tokenize(tokenizer, row["messages"] if "messages" in row else row["text"])
        labels = list(full)
    else:
        raise ValueError(f"An example needs `prompt` and `completion`, `messages`, or `text`; got keys {sorted(row)}.")
    if max_length is not None:
        full, labels = full[:max_length], labels[:max_length]
    return full, labels


def token_texts(tokenizer: Any, ids: list[int]) -> list[str]:
    """Display text of each token: what it adds to the decoded text (spaces included)."""
    texts, previous = [], ""
    for i in range(len(ids)):
        current = tokenizer.decode(ids[: i + 1], skip_special_tokens=False)
        piece = current[len(previous) :] if current.startswith(previous) else tokenizer.decode([ids[i]])
        texts.append(piece)
        previous = current
    return texts
