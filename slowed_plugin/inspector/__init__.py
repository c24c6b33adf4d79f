"""``slowed inspect``: which target tokens Low-Entropy Masking would drop, with each token's entropy.

    slowed inspect --model PATH_OR_ID [--adapter PATH] --data train.jsonl --mask-ratio 0.2 --html mask.html

Examples are tokenised the way TRL's ``SFTTrainer`` does (:mod:`.encode`: prompt/completion rows train on the
completion only, ``messages`` and ``text`` rows on every token), the model scores them in one forward pass in
eval mode (no dropout), and the selection is the training code's own (:mod:`.score`), so what is shown is what
training drops for these logits. In the terminal (:mod:`.render`) dropped tokens are red and struck through
(``[-token-]`` without colour), kept targets green, the prompt dim; a table lists every target with its entropy.
The HTML file is standalone: each token carries its entropy above it and in its tooltip. :mod:`.cli` is the
command line.

Importing this package is light: torch, transformers and trl load when an example is encoded or scored.
"""

from .encode import encode_example, token_texts
from .render import render_html, render_terminal
from .score import InspectedExample, inspect_examples

__all__ = ["InspectedExample", "encode_example", "inspect_examples", "render_html", "render_terminal", "token_texts"]
