"""Shared fixtures: tiny local models and a tokenizer, built once per session, never from the hub."""

from __future__ import annotations

import os

# Before transformers/datasets are imported anywhere: no hub, no telemetry.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["AXOLOTL_DO_NOT_TRACK"] = "1"
os.environ["WANDB_MODE"] = "disabled"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
from installed import require  # noqa: E402

FAMILIES = ("llama", "qwen2", "bloom")


@pytest.fixture(scope="session")
def cot_rows() -> list[dict]:
    """The bundled chain-of-thought set: prompt/completion rows."""
    from slowed_plugin.data import cot_tiny_rows

    return cot_tiny_rows()


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory, cot_rows) -> str:
    from slowed_plugin.tiny import build_tokenizer

    path = str(tmp_path_factory.mktemp("tokenizer"))
    build_tokenizer([r["prompt"] + " " + r["completion"] for r in cot_rows], path)
    return path


@pytest.fixture(scope="session")
def tokenizer(tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tokenizer_dir)


@pytest.fixture(scope="session")
def model_dirs(tmp_path_factory, tokenizer_dir, tokenizer) -> dict[str, str]:
    """family -> a folder holding a tiny randomly initialised model and the tokenizer."""
    import shutil

    from slowed_plugin.tiny import build_model, vocab_size

    dirs = {}
    for family in FAMILIES:
        path = str(tmp_path_factory.mktemp(family))
        build_model(family, vocab_size(tokenizer), path)
        for name in os.listdir(tokenizer_dir):
            shutil.copy(os.path.join(tokenizer_dir, name), path)
        dirs[family] = path
    return dirs


@pytest.fixture(scope="session")
def llama_dir(model_dirs) -> str:
    return model_dirs["llama"]


@pytest.fixture(params=["compiled", "eager"])
def kernels(request, monkeypatch):
    """Runs a fast-loss reference test on the compiled kernels (what users get) and on the eager fallback.

    No skip: if compiling failed here, the "compiled" run would silently test the fallback, so it fails
    instead (this project's machines have the C++ compiler that inductor needs on CPU).
    """
    from slowed_plugin.core.kernels import KERNELS

    with KERNELS.switched(compile=request.param == "compiled"):
        yield request.param
    if request.param == "compiled":
        assert KERNELS.failed is None, f"torch.compile failed, the fallback ran instead: {KERNELS.failed}"


@pytest.fixture(scope="module")
def one_thread():
    """Torch on one thread for a module (``pytestmark = pytest.mark.usefixtures("one_thread")``): tiny models run
    several times faster on one thread, and far faster when other processes share the CPU."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def deepspeed_env(tmp_path_factory) -> dict[str, str]:
    """Environment of a DeepSpeed subprocess on CPU: DeepSpeed's CPU accelerator, and one JIT build cache for its
    comm op per test session (unless one is set), shared by the TRL and Axolotl DeepSpeed tests."""
    require("deepspeed", "deepspeed")
    cache = os.environ.get("TORCH_EXTENSIONS_DIR") or str(tmp_path_factory.mktemp("torch_extensions"))
    return {"DS_ACCELERATOR": "cpu", "TORCH_EXTENSIONS_DIR": cache, "OMP_NUM_THREADS": "1"}
