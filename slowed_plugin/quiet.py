"""Quiet by default: the ``slowed`` command hides third-party import noise that a user cannot act on.

Each filter matches one known message of one module, so real warnings from the same libraries still
show. ``slowed --verbose`` or ``SLOWED_VERBOSE=1`` keeps everything. What is hidden, and why:

- torchao ``Failed to load .../torchao/_C_*.so``: optional CUDA kernels that torchao probes for at import
  (pulled in by peft when the ``[axolotl]`` extra is installed); CPU-only and older-GPU installs lack them.
- torch ``_pytree`` ``register_constant() on Enum subclasses is deprecated``: torchao registering its enums
  the old way; a deprecation for torchao's authors.
- bitsandbytes ``Skipping publisher trust check for 'kernels-community/...'`` (UserWarning) and
  ``Failed to load CPU gemm_4bit_forward from kernels-community``: its optional CPU 4-bit kernel from the
  hub, not fetched while offline; bitsandbytes falls back to its own implementation.
"""

from __future__ import annotations

import logging
import warnings

# logger name -> fragments; a record of that logger whose message contains one of them is dropped.
NOISE: dict[str, tuple[str, ...]] = {
    "torchao": ("Failed to load ",),
    "torch.utils._pytree": ("register_constant() on Enum subclasses is deprecated",),
    "bitsandbytes.backends.cpu.ops": ("Failed to load CPU gemm_4bit_forward from kernels-community",),
}
WARNINGS = (r"Skipping publisher trust check for 'kernels-community/",)


class _DropKnownNoise(logging.Filter):
    def __init__(self, fragments: tuple[str, ...]) -> None:
        super().__init__()
        self.fragments = fragments

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a malformed record is not ours to judge
            return True
        if record.name == "torchao" and ".so" not in message:
            return True
        return not any(fragment in message for fragment in self.fragments)


def silence_import_noise() -> None:
    """Install the filters (idempotent). Call before the libraries are imported."""
    for name, fragments in NOISE.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropKnownNoise) for f in logger.filters):
            logger.addFilter(_DropKnownNoise(fragments))
    for message in WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=UserWarning)
