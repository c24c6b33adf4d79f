"""The tiny models of the safety-evaluation tests (tests/support/safety_models.py), built once per session."""

from safety_models import (  # noqa: F401 - fixtures
    classification_guard_dir,
    forced_model_dir,
    generative_guard_dir,
    safety_tokenizer,
)
