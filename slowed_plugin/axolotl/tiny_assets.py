"""Local assets for ``recipes/tiny-cpu.yaml``: a tiny model, its tokenizer and the bundled CoT data.

    python -m slowed_plugin.axolotl.tiny_assets slowed-tiny      # then: axolotl train recipes/tiny-cpu.yaml

Writes, under the folder given (``slowed-tiny`` by default, relative to where you run training):

- ``llama/`` (and ``qwen2/``, ``bloom/`` with ``--family all``): a randomly initialised 2-layer model
  with a word-level tokenizer (:mod:`slowed_plugin.tiny`); a few hundred kB, no download;
- ``cot_alpaca.jsonl``: the bundled chain-of-thought rows as Axolotl ``alpaca`` rows
  (``instruction``, ``input``, ``output``);
- ``cot_chat.jsonl``: the same rows as ``chat_template`` rows (``messages`` with user/assistant turns).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

from ..data import cot_tiny_rows

FAMILIES = ("llama", "qwen2", "bloom")
# Words of Axolotl's alpaca prompt, so that the tiny tokenizer does not map the template to <unk>.
_ALPACA_WORDS = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request. ### Instruction: ### Input: ### Response:"
)


def write_datasets(root: str | os.PathLike) -> dict[str, str]:
    """Write the alpaca and chat forms of the bundled rows; returns {"alpaca": path, "chat": path}."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rows = cot_tiny_rows()
    paths = {"alpaca": root / "cot_alpaca.jsonl", "chat": root / "cot_chat.jsonl"}
    with open(paths["alpaca"], "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps({"instruction": row["prompt"], "input": "", "output": row["completion"]}) + "\n")
    with open(paths["chat"], "w", encoding="utf-8") as handle:
        for row in rows:
            messages = [{"role": "user", "content": row["prompt"]}, {"role": "assistant", "content": row["completion"]}]
            handle.write(json.dumps({"messages": messages}) + "\n")
    return {name: str(path) for name, path in paths.items()}


def write_model(root: str | os.PathLike, family: str = "llama", hidden: int = 64, layers: int = 2) -> str:
    """A tiny ``family`` model and its tokenizer in ``root/family``; returns that folder."""
    from ..tiny import build_model, build_tokenizer

    path = Path(root) / family
    path.mkdir(parents=True, exist_ok=True)
    rows = cot_tiny_rows()
    tokenizer = build_tokenizer([r["prompt"] + " " + r["completion"] for r in rows] + [_ALPACA_WORDS], str(path))
    build_model(family, len(tokenizer), str(path), hidden=hidden, layers=layers)
    return str(path)


def build(root: str | os.PathLike, families: tuple[str, ...] = ("llama",)) -> dict[str, str]:
    """Everything ``recipes/tiny-cpu.yaml`` reads; returns {"alpaca", "chat", family...: path}."""
    paths = write_datasets(root)
    for family in families:
        paths[family] = write_model(root, family)
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m slowed_plugin.axolotl.tiny_assets", description=__doc__.split("\n")[0]
    )
    parser.add_argument("root", nargs="?", default="slowed-tiny", help="folder to write (default: slowed-tiny)")
    parser.add_argument("--family", choices=(*FAMILIES, "all"), default="llama")
    parser.add_argument("--force", action="store_true", help="overwrite an existing folder")
    args = parser.parse_args(argv)
    if args.force and os.path.isdir(args.root):
        shutil.rmtree(args.root)
    families = FAMILIES if args.family == "all" else (args.family,)
    for name, path in build(args.root, families).items():
        print(f"{name:<7}{path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
