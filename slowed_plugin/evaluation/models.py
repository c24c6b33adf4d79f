"""Loading the evaluated model (plus an optional PEFT adapter) and choosing device and dtype."""

from __future__ import annotations

import gc
import os
from typing import Any

DTYPES = ("auto", "float32", "bfloat16", "float16")


def resolve_device(device: str | None) -> Any:
    """``None``/``"auto"``: the first CUDA device when there is one, else the CPU."""
    import torch

    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str | None, device: Any) -> Any:
    """``auto``: bfloat16 on a GPU that supports it, float32 otherwise (CPU half precision is slow)."""
    import torch

    if dtype in (None, "auto"):
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    if dtype not in DTYPES:
        raise ValueError(f"`dtype` must be one of {', '.join(DTYPES)}; got {dtype!r}.")
    return getattr(torch, dtype)


def free_memory() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _is_adapter(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "adapter_config.json"))


def _has_tokenizer(path: str) -> bool:
    return any(
        os.path.isfile(os.path.join(path, name))
        for name in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")
    )


def add_model_arguments(parser: Any) -> None:
    """``--model`` and ``--adapter``, what :func:`load_model_and_tokenizer` takes, for every command that loads
    the evaluated model (``slowed eval safety``, ``slowed inspect``)."""
    parser.add_argument(
        "--model", required=True, help="Model folder or hub id (a folder holding an adapter works too)."
    )
    parser.add_argument("--adapter", default=None, help="PEFT adapter folder or hub id applied on top of --model.")


def load_model_and_tokenizer(
    model: str, adapter: str | None = None, device: str | None = None, dtype: str | None = "auto"
) -> tuple[Any, Any]:
    """A causal LM in eval mode on ``device`` and its tokenizer.

    ``model`` is a local folder or hub id. ``adapter`` is a PEFT adapter folder or hub id applied on
    top; a ``model`` folder that itself holds an adapter (``adapter_config.json``) loads its base
    model from the adapter's config. The tokenizer comes from the adapter folder when it has one
    (trainers save theirs there, chat template included), else from the model.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    if model.startswith((".", os.sep, "~")) and not os.path.exists(os.path.expanduser(model)):
        raise FileNotFoundError(f"the model folder {os.path.abspath(os.path.expanduser(model))} does not exist.")
    if adapter is None and os.path.isdir(model) and _is_adapter(model):
        model, adapter = _adapter_base(model), model
    base = AutoModelForCausalLM.from_pretrained(model, dtype=torch_dtype)
    tokenizer_source = adapter if adapter is not None and os.path.isdir(adapter) and _has_tokenizer(adapter) else model
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_source)
    if adapter is not None:
        from peft import PeftModel

        base = PeftModel.from_pretrained(base, adapter)
    base.to(torch_device)
    base.eval()
    return base, tokenizer


def _adapter_base(path: str) -> str:
    import json

    with open(os.path.join(path, "adapter_config.json")) as handle:
        base = json.load(handle).get("base_model_name_or_path")
    if not base:
        raise ValueError(
            f"{path} holds a PEFT adapter without `base_model_name_or_path`; pass the base model with "
            f"`--model BASE --adapter {path}`."
        )
    return resolve_base(base, path)


# How many folders above an adapter a relative base model is looked for: `RUN/outputs/X/checkpoint-N` is three.
BASE_SEARCH_LEVELS = 3


def resolve_base(base: str, adapter: str) -> str:
    """The base model an adapter names, as a path or hub id.

    Axolotl saves ``base_model_name_or_path`` as written in the recipe, often relative to the folder
    training ran from (``./models/x``). A relative path that exists from the current folder is kept;
    else one that exists from the adapter's folder or one of its ``BASE_SEARCH_LEVELS`` nearest ancestors is used
    (Axolotl's ``outputs/X`` is two levels below the folder training ran from, its checkpoints three);
    a name that looks like a path but exists nowhere fails with one line naming the paths tried. A
    plain ``org/name`` is a hub id.
    """
    if os.path.isabs(base):
        if not os.path.exists(base):
            raise FileNotFoundError(f"the adapter {adapter} names base model {base}, which does not exist.")
        return base
    if os.path.exists(base):
        return base
    folder = os.path.abspath(adapter)
    starts = [folder]
    for _ in range(BASE_SEARCH_LEVELS):
        starts.append(os.path.dirname(starts[-1]))
    tried = list(dict.fromkeys(os.path.normpath(os.path.join(start, base)) for start in starts))
    for candidate in tried:
        if os.path.exists(candidate):
            return candidate
    looks_local = base.startswith((".", "~")) or base.count("/") != 1 or os.sep != "/" and os.sep in base
    if looks_local:
        shown = ", ".join([os.path.abspath(base), *tried])
        raise FileNotFoundError(
            f"the adapter {adapter} names base model {base!r}, found at none of: {shown}; "
            f"pass it with `--model BASE --adapter {adapter}`."
        )
    return base  # a hub id
