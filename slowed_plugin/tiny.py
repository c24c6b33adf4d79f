"""Tiny models and tokenizers built locally, for tests, the quick start and the demo (no hub).

The three model families of the paper (Llama, Qwen2, Bloom) at a few thousand parameters, and a
word-level tokenizer trained with the ``tokenizers`` library on the caller's texts.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

import torch

SPECIAL_TOKENS = ["<pad>", "<unk>", "<s>", "</s>"]
# A minimal chat template so that SFTTrainer's conversational and prompt-completion paths work.
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] }}: {{ message['content'] }}"
    "{% if not loop.last %} {% endif %}{% endfor %}"
    "{% if add_generation_prompt %} assistant:{% endif %}"
)


def build_tokenizer(texts: Iterable[str], path: str | None = None):
    """A word-level ``PreTrainedTokenizerFast`` over the words and punctuation of ``texts``."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    trainer = trainers.WordLevelTrainer(special_tokens=SPECIAL_TOKENS, show_progress=False)
    # The chat template's words are part of the corpus, so that templated text has no <unk>.
    tokenizer.train_from_iterator([*texts, "user : assistant :"], trainer)
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", tokenizer.token_to_id("<s>"))]
    )
    from tokenizers import decoders

    tokenizer.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        chat_template=CHAT_TEMPLATE,
    )
    if path is not None:
        fast.save_pretrained(path)
    return fast


def vocab_size(tokenizer) -> int:
    """Embedding rows a model needs for ``tokenizer``: one past the largest id (``len`` can be smaller
    when a special token is also a corpus word)."""
    return max(tokenizer.get_vocab().values()) + 1


def build_model(
    family: str, vocab_size: int, path: str | None = None, hidden: int = 32, layers: int = 2, seed: int = 0
):
    """A randomly initialised causal LM of ``family`` (llama, qwen2, bloom), saved to ``path`` if given."""
    from transformers import AutoModelForCausalLM, BloomConfig, LlamaConfig, Qwen2Config

    common = dict(vocab_size=vocab_size, bos_token_id=2, eos_token_id=3, pad_token_id=0, tie_word_embeddings=False)
    if family in ("llama", "qwen2"):
        config = (LlamaConfig if family == "llama" else Qwen2Config)(
            hidden_size=hidden,
            intermediate_size=2 * hidden,
            num_hidden_layers=layers,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=512,
            **common,
        )
    elif family == "bloom":
        config = BloomConfig(hidden_size=hidden, n_layer=layers, n_head=4, **common)
    else:
        raise ValueError(f"`family` must be one of llama, qwen2, bloom; got {family!r}.")
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    if path is not None:
        os.makedirs(path, exist_ok=True)
        model.save_pretrained(path)
    return model
