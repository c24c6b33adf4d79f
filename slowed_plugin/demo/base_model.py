"""The demo's "aligned base model": a tiny Llama trained from scratch on CPU, shipped for the default settings.

The default world's build (1.3 MB) ships in ``base_weights/`` and the hard world's in ``base_weights_hard/``, so
``slowed demo`` and ``slowed demo --world hard`` start training at once; ``--rebuild-base`` and any other settings
(``--hard-off``, ``--opener``) build it (minutes on 2 cores) and store it under ``$SLOWED_CACHE`` (default
``~/.cache/slowed-plugin``) in a folder named after a hash of what changes the weights (the build's settings, the
training rows, the vocabulary), so a changed setting builds a new one, two worlds that train the base model on
the same rows with the same vocabulary share one, and the same command rebuilds the same bits.
The build fixes its thread count, its seeds and its data order, and runs in a worker process with the demo's
pinned floating point (:mod:`.numerics`), so that every x86-64 CPU with AVX2 builds the same bits with the same
torch build: :data:`REFERENCE_SHA256`, the shipped weights' digest. One op of the build is the exception: torch's
non-fused AdamW takes ``exp_avg_sq.sqrt()`` through MKL's ``vsSqrt``, whose COMPATIBLE branch rounds differently
on Intel and AMD processors, so a base model built on an AMD CPU differs from the shipped (Intel-built) bits
(docs/demo.md, "The same numbers on every CPU"). The shipped bases are the same files everywhere.

Training is a plain torch loop over the same token sequences TRL's ``SFTTrainer`` builds for a
prompt/completion dataset: ``<s>`` + prompt + completion + ``</s>``, loss on the completion only.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import random
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .numerics import numerics_record
from .world import World, WorldSettings, build_world

# Bump when the build code changes in a way that changes the weights. 2: built with the pinned floating point.
BUILD_VERSION = 2
# ``state_sha256`` of the default settings' build under the pin (torch 2.13.0 CPU, recorded on an Intel Xeon of the
# Sapphire Rapids class; the same on every x86-64 CPU with AVX2); the report says whether a
# build matches it.
REFERENCE_SHA256 = "5ce941c8904f01f8863bef51568cc30d73d9db8d971a82457d66ab37fe96fa06"
META_FILE = "slowed_demo_base.json"
# The default settings' build, as `build_base_model` saved it (pinned, torch 2.13.0 CPU). Shipping saves the
# first run's minutes of building, nothing else: `--rebuild-base` gives the same bits (two builds here did).
SHIPPED_DIR = Path(__file__).with_name("base_weights")
# The hard world's (`--world hard`) build, the same way (built on the machine of docs/demo.md's hard-world tables).
SHIPPED_HARD_DIR = Path(__file__).with_name("base_weights_hard")
SHIPPED_DIRS = (SHIPPED_DIR, SHIPPED_HARD_DIR)
# Version of what `BaseSettings.key` hashes (not of the weights: that is BUILD_VERSION).
KEY_FORMAT = 2


@dataclass(frozen=True)
class BaseSettings:
    """How the base model is built. Every field goes into the cache key."""

    world: WorldSettings = field(default_factory=WorldSettings)
    family: str = "llama"
    hidden: int = 128
    layers: int = 2
    steps: int = 800
    batch_size: int = 64
    lr: float = 3e-3
    warmup_steps: int = 100
    weight_decay: float = 0.01
    # Share of each pool of World.base in every batch.
    mixture: tuple[tuple[str, float], ...] = (("harmful", 0.3), ("benign", 0.25), ("arithmetic", 0.35), ("worked", 0.1))
    seed: int = 0
    # Fixed, not taken from the machine: float reductions, hence the bits, depend on it. One thread: on a
    # busy or 2-core machine a second thread costs this tiny model more than it gains.
    threads: int = 1

    def key(self) -> str:
        """The cache key: a hash of what the weights are a function of, namely the build's own settings, the
        vocabulary (token ids) and the rows of every pool the mixture draws from. Not of the world's settings
        themselves: two worlds that differ only in what the base model never sees share one base model."""
        return content_key(self)


@functools.lru_cache(maxsize=32)
def content_key(settings: BaseSettings) -> str:
    """:meth:`BaseSettings.key` (cached: it builds the world and its tokenizer, a fraction of a second)."""
    from ..tiny import build_tokenizer

    world = build_world(settings.world)
    build = {name: value for name, value in asdict(settings).items() if name != "world"}
    digest = hashlib.sha256(
        json.dumps({"build_version": BUILD_VERSION, "key_format": KEY_FORMAT, **build}, sort_keys=True).encode()
    )
    digest.update(json.dumps(sorted(build_tokenizer(world.texts()).get_vocab().items())).encode())
    for name, _ in settings.mixture:
        digest.update(json.dumps([name, [[e.prompt, e.completion] for e in world.base[name]]]).encode())
    return digest.hexdigest()[:16]


def cache_root() -> Path:
    return Path(os.environ.get("SLOWED_CACHE") or Path.home() / ".cache" / "slowed-plugin")


def cached_path(settings: BaseSettings) -> Path:
    return cache_root() / f"demo-base-{settings.key()}"


def is_cached(settings: BaseSettings) -> bool:
    return (cached_path(settings) / META_FILE).is_file()


def load_meta(path: str | Path) -> dict:
    return json.loads((Path(path) / META_FILE).read_text())


def shipped_path(settings: BaseSettings) -> Path | None:
    """The shipped build of ``settings`` (the default world's or the hard world's), or None."""
    for folder in SHIPPED_DIRS:
        if (folder / META_FILE).is_file() and load_meta(folder)["key"] == settings.key():
            return folder
    return None


def reference_sha256(settings: BaseSettings) -> str | None:
    """The weights' sha256 of the shipped build of ``settings`` (the documented bits), None for other settings."""
    shipped = shipped_path(settings)
    return None if shipped is None else load_meta(shipped)["state_sha256"]


def find_base_model(settings: BaseSettings) -> tuple[Path, str] | None:
    """Where a finished base model of ``settings`` is, and how it got there ("cached" or "shipped"); None when it
    must be built. A cached build comes first: it is the one ``--rebuild-base`` made."""
    if is_cached(settings):
        return cached_path(settings), "cached"
    shipped = shipped_path(settings)
    return (shipped, "shipped") if shipped is not None else None


def ensure_base_model(
    settings: BaseSettings, progress: bool = True, rebuild: bool = False, on_step: Callable[[int], None] | None = None
) -> Path:
    """The folder of the base model of ``settings`` (model, tokenizer, metadata): cached, shipped, or built now.

    ``on_step(step)`` is called after every optimizer step of a build (the demo's progress bar)."""
    found = find_base_model(settings)
    if found is not None and not rebuild:
        return found[0]
    path = cached_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_builds(path)
    tmp = Path(tempfile.mkdtemp(prefix=f"{path.name}.tmp-{os.getpid()}-", dir=path.parent))
    try:
        build_base_model(settings, tmp, progress=progress, on_step=on_step)
        if path.exists():
            shutil.rmtree(path)
        try:
            os.replace(tmp, path)
        except OSError:  # another process finished the same build first: its bits are the same
            if not is_cached(settings):
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return path


def _remove_stale_builds(path: Path) -> None:
    """Remove half-written builds of ``path`` left by processes that no longer run (a killed demo)."""
    for stale in path.parent.glob(path.name + ".tmp-*"):
        pid = stale.name.split(".tmp-", 1)[1].split("-", 1)[0]
        if pid.isdigit() and not _running(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def encode(tokenizer, prompt: str, completion: str) -> tuple[list[int], int]:
    """Token ids of prompt + completion + eos as TRL's SFTTrainer builds them, and the prompt's length."""
    prompt_ids = tokenizer(prompt)["input_ids"]
    ids = tokenizer(prompt + completion + tokenizer.eos_token)["input_ids"]
    if ids[: len(prompt_ids)] != prompt_ids:
        raise ValueError(f"the tokenized prompt is not a prefix of prompt + completion: {prompt!r}")
    return ids, len(prompt_ids)


def collate(rows: list[tuple[list[int], int]], pad_id: int):
    """Right-padded input_ids, attention_mask and labels (-100 on prompt and padding)."""
    import torch

    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (ids, n_prompt) in enumerate(rows):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        labels[i, n_prompt : len(ids)] = torch.tensor(ids[n_prompt:])
        mask[i, : len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}


def state_digest(model) -> str:
    """sha256 over every tensor of the state dict, in name order: equal digests mean equal bits."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _optimizer(model, settings: BaseSettings, fused: bool):
    """AdamW (weight decay on the matrices only) with linear warm-up and cosine decay."""
    import torch

    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": settings.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=settings.lr,
        **({"fused": True} if fused else {}),
    )

    def lr_at(step: int) -> float:
        if step < settings.warmup_steps:
            return (step + 1) / settings.warmup_steps
        progress_ = (step - settings.warmup_steps) / max(1, settings.steps - settings.warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * progress_))

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lr_at)


def _meta(settings: BaseSettings, model, vocab: int, seconds: float, losses: list[tuple[int, float]]) -> dict:
    """``slowed_demo_base.json``: the key, the settings, the weights' digest and where they were computed."""
    import torch

    return {
        "key": settings.key(),
        "settings": asdict(settings),
        "build_version": BUILD_VERSION,
        "parameters": sum(p.numel() for p in model.parameters()),
        "vocab_size": vocab,
        "train_seconds": round(seconds, 1),
        "loss": losses,
        "state_sha256": state_digest(model),
        "torch": torch.__version__,
        "numerics": numerics_record(),
    }


def build_base_model(
    settings: BaseSettings,
    out: str | Path,
    progress: bool = True,
    world: World | None = None,
    on_step: Callable[[int], None] | None = None,
    fused_adamw: bool = False,
):
    """Train the base model of ``settings`` from scratch and save model, tokenizer and metadata to ``out``.

    ``fused_adamw``: torch's fused AdamW kernel, whose square root is exact on every x86-64 CPU, instead of the
    default one, whose MKL square root differs between Intel and AMD. Off for every demo build (the shipped
    bases and the docs' tables were made without it); the numerics probe turns it on."""
    import torch
    from tqdm.auto import tqdm

    from ..tiny import build_model, build_tokenizer, vocab_size

    out = Path(out)
    world = world or build_world(settings.world)
    threads = torch.get_num_threads()
    torch.set_num_threads(settings.threads)
    try:
        tokenizer = build_tokenizer(world.texts())
        pools = {
            name: [encode(tokenizer, e.prompt, e.completion) for e in world.base[name]] for name, _ in settings.mixture
        }
        model = build_model(
            settings.family, vocab_size(tokenizer), hidden=settings.hidden, layers=settings.layers, seed=settings.seed
        )
        model.train()
        optimizer, scheduler = _optimizer(model, settings, fused_adamw)
        rng = random.Random(settings.seed)
        names = [name for name, _ in settings.mixture]
        weights = [w for _, w in settings.mixture]
        losses: list[tuple[int, float]] = []
        running, start = 0.0, time.perf_counter()
        bar = tqdm(range(settings.steps), desc="base model (once, then cached)", disable=not progress, unit="step")
        for step in bar:
            rows = [rng.choice(pools[rng.choices(names, weights)[0]]) for _ in range(settings.batch_size)]
            batch = collate(rows, tokenizer.pad_token_id)
            loss = model(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            running += float(loss.detach())
            if on_step is not None:
                on_step(step + 1)
            if (step + 1) % 100 == 0:
                losses.append((step + 1, running / 100))
                bar.set_postfix(loss=f"{running / 100:.3f}")
                running = 0.0
        seconds = time.perf_counter() - start
        model.eval()
        out.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
        meta = _meta(settings, model, vocab_size(tokenizer), seconds, losses)
        (out / META_FILE).write_text(json.dumps(meta, indent=1))
        return model, tokenizer
    finally:
        torch.set_num_threads(threads)
