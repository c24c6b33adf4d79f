"""Batched greedy generation, the way a chat model is meant to be prompted: through its own chat template.

Used for the evaluated model's answers and for generative guards' verdicts. Works on CPU and GPU
(inputs go to the model's device), on a ``PeftModel`` as well as a plain model, and inside a
training run: the model is put in eval mode for the call and its mode is restored afterwards.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any


def has_chat_template(tokenizer: Any) -> bool:
    """Whether ``tokenizer`` carries a chat template of its own."""
    return bool(getattr(tokenizer, "chat_template", None))


def chat_prompts(
    tokenizer: Any, prompts: Sequence[str], use_chat_template: bool | None = None
) -> tuple[list[str], bool]:
    """The texts to feed the model for ``prompts`` and whether a chat template rendered them.

    ``use_chat_template``: ``None`` (auto) uses the template when the tokenizer has one; ``True``
    requires one; ``False`` feeds the raw prompts.
    """
    if use_chat_template is None:
        use_chat_template = has_chat_template(tokenizer)
    if not use_chat_template:
        return list(prompts), False
    if not has_chat_template(tokenizer):
        raise ValueError(
            "`use_chat_template=True` needs a tokenizer with a chat template, and this one has none. "
            "Pass `use_chat_template=False` (raw prompts) or set `tokenizer.chat_template`."
        )
    texts = [
        tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
        for p in prompts
    ]
    return texts, True


def generate_answers(
    model: Any,
    tokenizer: Any,
    prompts: list[str],
    max_new_tokens: int = 64,
    batch_size: int = 16,
    progress: bool = True,
    use_chat_template: bool | None = None,
) -> list[str]:
    """Greedy answers of ``model`` to ``prompts``, one string per prompt, in order.

    Each prompt is a single user turn rendered with the tokenizer's chat template and its
    generation prompt (``use_chat_template=None``: when the tokenizer has a template, else the
    raw prompt). Prompts are batched by length with left padding; ``progress`` shows a tqdm bar.
    """
    texts, templated = chat_prompts(tokenizer, prompts, use_chat_template)
    # A rendered template already holds the special tokens it wants (BOS included): adding them
    # again would double the BOS.
    progress_label = "Generating answers" if progress else None
    return generate_from_texts(model, tokenizer, texts, max_new_tokens, batch_size, not templated, progress_label)


def generate_from_texts(
    model: Any,
    tokenizer: Any,
    texts: Sequence[str],
    max_new_tokens: int,
    batch_size: int,
    add_special_tokens: bool = True,
    progress: str | None = None,
    strip: bool = True,
) -> list[str]:
    """Greedy continuations of already formatted ``texts`` (new tokens only, special tokens removed);
    ``progress``: the label of a tqdm bar, or None for none; ``strip=False`` keeps the continuation's leading and
    trailing white space (text that is trained on as generated)."""
    import torch

    if max_new_tokens < 1:
        raise ValueError(f"`max_new_tokens` must be >= 1, got {max_new_tokens}.")
    if batch_size < 1:
        raise ValueError(f"`batch_size` must be >= 1, got {batch_size}.")
    texts = list(texts)
    if not texts:
        return []
    # Longest first: similar lengths share a batch (less padding) and an out-of-memory error comes at once.
    lengths = [len(t) for t in texts]
    order = sorted(range(len(texts)), key=lambda i: -lengths[i])
    answers: list[str] = [""] * len(texts)
    device = model_device(model)
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    # no_grad, not inference_mode: a model that caches tensors lazily (rotary tables, ...) must not keep
    # inference tensors that a later training step would try to save for backward.
    with _generation_mode(model, tokenizer) as (pad_id, eos_ids), torch.no_grad():
        for batch in _progress(batches, progress, len(texts)):
            encoded = tokenizer(
                [texts[i] for i in batch], return_tensors="pt", padding=True, add_special_tokens=add_special_tokens
            ).to(device)
            output = model.generate(
                input_ids=encoded["input_ids"],
                attention_mask=encoded["attention_mask"],
                max_new_tokens=max_new_tokens,
                do_sample=False,
                num_beams=1,
                temperature=None,
                top_p=None,
                top_k=None,
                pad_token_id=pad_id,
                eos_token_id=eos_ids,
            )
            new_tokens = output[:, encoded["input_ids"].shape[1] :]
            for index, row in zip(batch, new_tokens, strict=True):
                text = tokenizer.decode(row, skip_special_tokens=True)
                answers[index] = text.strip() if strip else text
    return answers


def model_device(model: Any) -> Any:
    import torch

    device = getattr(model, "device", None)
    if isinstance(device, torch.device) and device.type != "meta":
        return device
    for parameter in model.parameters():
        return parameter.device
    return torch.device("cpu")


@contextlib.contextmanager
def padding(tokenizer: Any, side: str, purpose: str) -> Iterator[None]:
    """The caller's tokenizer pads on ``side``, with its EOS token as pad token if it has none, for the duration;
    both restored afterwards (a row of trainer/patches.py's table). ``purpose`` names the caller in the error of a
    tokenizer with neither a pad nor an EOS token."""
    padding_side, pad_token = tokenizer.padding_side, tokenizer.pad_token
    if pad_token is None and tokenizer.eos_token is None:
        raise ValueError(f"{purpose} needs a pad or an EOS token; this tokenizer has neither.")
    tokenizer.padding_side = side
    if pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    try:
        yield
    finally:
        tokenizer.padding_side = padding_side
        if pad_token is None:
            tokenizer.pad_token = None


@contextlib.contextmanager
def _generation_mode(model: Any, tokenizer: Any) -> Iterator[tuple[int, list[int] | int | None]]:
    """Eval mode, left padding and a pad token for the duration of the call; all restored afterwards."""
    was_training = model.training
    generation_config = getattr(model, "generation_config", None)
    eos_ids = getattr(generation_config, "eos_token_id", None)
    with padding(tokenizer, "left", "Batched generation"):
        if eos_ids is None:
            eos_ids = tokenizer.eos_token_id
        model.eval()
        try:
            yield tokenizer.pad_token_id, eos_ids
        finally:
            if was_training:
                model.train()


def _progress(batches: list[list[int]], desc: str | None, total: int) -> Iterator[list[int]]:
    if desc is None:
        yield from batches
        return
    from tqdm.auto import tqdm

    with tqdm(total=total, desc=desc, unit="prompt") as bar:
        for batch in batches:
            yield batch
            bar.update(len(batch))
