"""Running the real ``axolotl train`` on tiny local assets, and reading what a run leaves behind."""

from __future__ import annotations

import glob
import json
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
RECIPES = ROOT / "recipes"
TINY_RECIPE = RECIPES / "tiny-cpu.yaml"
AXOLOTL = Path(sys.executable).with_name("axolotl")
# What the `axolotl` console script runs. Started with `-c`, the training process has no __main__ file for
# `datasets`' spawn pool to re-import, which saves ~7 s of imports per run when Axolotl saves the prepared data.
AXOLOTL_MAIN = "import sys; from axolotl.cli.main import main; sys.argv[0] = 'axolotl'; sys.exit(main())"


def offline_env(threads: int = 1) -> dict[str, str]:
    """Environment of a training subprocess: offline, no telemetry, a fixed number of CPU threads."""
    env = dict(os.environ)
    env.update(
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        AXOLOTL_DO_NOT_TRACK="1",
        WANDB_MODE="disabled",
        TOKENIZERS_PARALLELISM="false",
        OMP_NUM_THREADS=str(threads),
        MKL_NUM_THREADS=str(threads),
        CUDA_VISIBLE_DEVICES="",
        PYTHONUNBUFFERED="1",
    )
    # Wiring runs: the kernels' compiled path has tests of its own (tests/core, the doctor); eager kernels spare
    # each training process its compile or inductor-cache load. SLOWED_COMPILE=1 in the caller's environment wins.
    env.setdefault("SLOWED_COMPILE", "0")
    # The test plugin in this module must be importable by the training process.
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(Path(__file__).parent), env.get("PYTHONPATH")) if p)
    # `axolotl train` starts `accelerate` by name unless told `--launcher python`; keep the venv first anyway.
    env["PATH"] = f"{AXOLOTL.parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def load_recipe(path: str | os.PathLike = TINY_RECIPE) -> dict[str, Any]:
    with open(path, encoding="utf-8") as handle:
        return yaml.safe_load(handle)


def without_slowed(config: dict[str, Any]) -> dict[str, Any]:
    """The same recipe with SLowED removed (the plain-distillation twin)."""
    plain = {k: v for k, v in config.items() if k != "slowed"}
    plugins = [p for p in config.get("plugins") or [] if not str(p).endswith("SLowEDPlugin")]
    if plugins:
        plain["plugins"] = plugins
    else:
        plain.pop("plugins", None)
    return plain


@dataclass
class Run:
    """One ``axolotl train`` subprocess and its outputs."""

    name: str
    workdir: Path
    config: dict[str, Any]
    process: subprocess.Popen | None = None
    started: float = 0.0
    seconds: float = 0.0
    returncode: int | None = None
    _state: dict[str, Any] | None = field(default=None, repr=False)

    @property
    def config_path(self) -> Path:
        return self.workdir / f"{self.name}.yaml"

    @property
    def log_path(self) -> Path:
        return self.workdir / f"{self.name}.log"

    @property
    def output_dir(self) -> Path:
        return self.workdir / self.config["output_dir"]

    def start(self, threads: int = 1, processes: int = 1, env: dict[str, str] | None = None) -> Run:
        """Start training; with ``processes > 1``, DDP on CPU as in ``tests/axolotl_cpu_ddp.py`` (torchrun,
        ``ACCELERATE_USE_CPU=true``; the config must list that module's plugin), or DeepSpeed when the config has
        ``deepspeed:`` (no ``ACCELERATE_USE_CPU``, which would turn DeepSpeed off; the config must list
        ``axolotl_cpu_ddp.CpuDeepSpeedPlugin``). ``env``: more environment for the training processes."""
        with open(self.config_path, "w", encoding="utf-8") as handle:
            yaml.safe_dump(self.config, handle, sort_keys=False)
        env = {**offline_env(threads), **(env or {})}
        if processes == 1:
            command = [sys.executable, "-c", AXOLOTL_MAIN, "train", str(self.config_path), "--launcher", "python"]
        else:
            if not self.config.get("deepspeed"):
                env["ACCELERATE_USE_CPU"] = "true"
            command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
            command += ["-m", "axolotl.cli.train", str(self.config_path)]
        log = open(self.log_path, "w", encoding="utf-8")  # noqa: SIM115 - closed in wait()
        self.started = time.perf_counter()
        self.process = subprocess.Popen(
            command,
            cwd=self.workdir,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self.process._log = log  # type: ignore[attr-defined]
        return self

    def wait(self, timeout: float = 600) -> Run:
        if self.process is not None and self.returncode is None:
            try:
                self.returncode = self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.returncode = self.process.wait()
            self.process._log.close()  # type: ignore[attr-defined]
            self.seconds = time.perf_counter() - self.started
        return self

    # ------------------------------------------------------------------ outputs
    @property
    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def check(self) -> Run:
        """Fail with the end of the run's log unless it trained and saved."""
        if self.returncode != 0:
            tail = "\n".join(self.log.replace("\r", "\n").splitlines()[-60:])
            raise AssertionError(f"axolotl train ({self.name}) exited with {self.returncode}:\n{tail}")
        return self

    def state(self) -> dict[str, Any]:
        """``trainer_state.json`` of the last checkpoint: the full-precision log history of the run."""
        if self._state is None:
            checkpoints = sorted(
                glob.glob(str(self.output_dir / "checkpoint-*")), key=lambda p: int(p.rsplit("-", 1)[-1])
            )
            assert checkpoints, f"{self.name}: no checkpoint in {self.output_dir}"
            with open(Path(checkpoints[-1]) / "trainer_state.json", encoding="utf-8") as handle:
                self._state = json.load(handle)
        return self._state

    @property
    def train_logs(self) -> list[dict[str, Any]]:
        return [entry for entry in self.state()["log_history"] if "loss" in entry]

    @property
    def eval_logs(self) -> list[dict[str, Any]]:
        return [entry for entry in self.state()["log_history"] if "eval_loss" in entry]

    def checkpoints(self) -> list[Path]:
        """The run's checkpoint folders, in step order."""
        return sorted(self.output_dir.glob("checkpoint-*"), key=lambda p: int(p.name.rsplit("-", 1)[-1]))

    def adapter_norms(self, folder: Path | None = None) -> dict[str, float]:
        """||scaling · B @ A||_F of every LoRA layer in the saved adapter (or the one in ``folder``)."""
        import torch
        from safetensors.torch import load_file

        from slowed_plugin.core.slow_tuning import lora_delta_norm

        folder = self.output_dir if folder is None else folder
        with open(folder / "adapter_config.json", encoding="utf-8") as handle:
            adapter = json.load(handle)
        rank, alpha = adapter["r"], adapter["lora_alpha"]
        scaling = alpha / math.sqrt(rank) if adapter.get("use_rslora") else alpha / rank
        weights = load_file(str(folder / "adapter_model.safetensors"))
        norms = {}
        for key, lora_a in weights.items():
            if key.endswith("lora_A.weight"):
                lora_b = weights[key.replace("lora_A", "lora_B")]
                norms[key.removesuffix(".lora_A.weight")] = float(
                    lora_delta_norm(lora_a.to(torch.float32), lora_b, scaling)
                )
        return norms


def start_runs(workdir: Path, configs: dict[str, dict[str, Any]], threads: int = 1) -> dict[str, Run]:
    """Start one ``axolotl train`` per config, all at once (each single-threaded), and wait for all."""
    runs = {name: Run(name, workdir, config).start(threads) for name, config in configs.items()}
    deadline = time.perf_counter() + 900
    while any(run.returncode is None for run in runs.values()):
        for run in runs.values():
            if run.returncode is None and (run.process.poll() is not None or time.perf_counter() > deadline):
                run.wait(timeout=1)
        time.sleep(0.2)
    return runs


SEED_PLUGIN = "axolotl_helpers.SeedAdaptersPlugin"


def __getattr__(name: str) -> Any:
    # Built on first use, so that importing this module does not import axolotl.
    if name == "SeedAdaptersPlugin":
        from axolotl.integrations.base import BasePlugin

        class SeedAdaptersPlugin(BasePlugin):
            """Seeds torch right before Axolotl creates the LoRA adapters.

            ``axolotl train`` does not seed before building adapters (the trainer seeds later), so LoRA's
            random A differs from process to process; comparing two runs step by step needs equal starts.
            """

            def pre_lora_load(self, cfg, model):
                import torch

                torch.manual_seed(cfg.seed if cfg.seed is not None else 0)

        globals()[name] = SeedAdaptersPlugin
        return SeedAdaptersPlugin
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# The bundled rows as chat_template data (written by slowed_plugin.axolotl.tiny_assets beside the alpaca file).
CHAT_DATASET = {
    "path": "./slowed-tiny/cot_chat.jsonl",
    "ds_type": "json",
    "type": "chat_template",
    "field_messages": "messages",
    "chat_template": "tokenizer_default",
}


def seeded(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` with the test plugin that makes LoRA's initialisation the same in every run."""
    return {**config, "plugins": [*(config.get("plugins") or []), SEED_PLUGIN]}


# ---------------------------------------------------------------------------------------------- config validation

PLUGIN = "slowed_plugin.SLowEDPlugin"
CCE = "axolotl.integrations.cut_cross_entropy.CutCrossEntropyPlugin"
LIGER = "axolotl.integrations.liger.LigerPlugin"
KD = "axolotl.integrations.kd.KDPlugin"

# Never loaded: validation does not touch the model.
BASE_CONFIG = {
    "base_model": "meta-llama/Llama-3.2-1B-Instruct",
    "datasets": [{"path": "data/cot.jsonl", "ds_type": "json", "type": "alpaca"}],
    "sequence_len": 512,
    "adapter": "lora",
    "lora_r": 8,
    "lora_alpha": 16,
    "lora_target_linear": True,
    "micro_batch_size": 1,
    "num_epochs": 1,
    "learning_rate": 1e-4,
    "output_dir": "./outputs/test",
    "plugins": [PLUGIN],
    "slowed": [10.0, 0.2],
}


def validate_axolotl(overrides: dict | None = None, drop: tuple[str, ...] = ()):
    """Axolotl's own ``validate_config`` on ``BASE_CONFIG`` + ``overrides``, with exactly its plugins registered."""
    import copy
    import logging

    from axolotl.integrations.base import PluginManager
    from axolotl.utils.config import validate_config
    from axolotl.utils.dict import DictDefault

    logging.getLogger("axolotl").setLevel(logging.WARNING)
    cfg = {k: v for k, v in {**BASE_CONFIG, **(overrides or {})}.items() if k not in drop}
    manager = PluginManager.get_instance()
    saved = dict(manager.plugins)
    manager.plugins.clear()
    try:
        for name in cfg.get("plugins") or []:
            manager.register(name)
        return validate_config(DictDefault(copy.deepcopy(cfg)))
    finally:
        manager.plugins.clear()
        manager.plugins.update(saved)


def axolotl_rejection(overrides: dict | None = None, drop: tuple[str, ...] = ()) -> str:
    """The one message with which Axolotl's validation rejects the config (fails if it is accepted)."""
    import pytest
    from pydantic import ValidationError

    with pytest.raises(ValidationError) as info:
        validate_axolotl(overrides, drop)
    messages = [str(e["msg"]).removeprefix("Value error, ") for e in info.value.errors()]
    assert len(messages) == 1, messages
    return messages[0]
