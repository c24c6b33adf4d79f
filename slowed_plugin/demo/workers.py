"""Process machinery: runs (and the base-model build) go to spawn-context worker processes, one torch thread
each, so that results do not depend on how many run at once (``--jobs``); each worker's output goes to
``logs/<run>.log`` and its progress messages to the parent's display. The workers start with the demo's pinned
floating point (:mod:`.numerics`), so that results do not depend on the CPU either."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import warnings
from pathlib import Path
from typing import Any

from .methods import RunSpec, TrainSettings
from .numerics import numerics_record, pinned_environment
from .progress import BASE_INDEX, BaseProgress, RunProgress
from .run import run_one
from .world import WorldSettings


def quiet_libraries() -> None:
    """No hub, no telemetry, no library chatter in a worker (its output goes to the run's log)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("WANDB_MODE", "disabled")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore")


@contextlib.contextmanager
def _output_to(path: Path):
    """Send this process's stdout and stderr, C level included, to ``path`` (library chatter stays out of the
    terminal, where the parent draws the progress bars)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(path, "w") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


@contextlib.contextmanager
def _logged(log_path: Path, what: str):
    """Output to ``log_path``, libraries quiet; a failure is printed there and re-raised as one line naming
    ``what`` and the log."""
    with _output_to(log_path):
        quiet_libraries()
        try:
            yield
        except BaseException as err:
            import traceback

            traceback.print_exc()
            raise RuntimeError(f"{what} failed: {err!r} (log: {log_path})") from None


def _worker_run(spec, train, world_settings, base_dir, out_dir, queue) -> dict[str, Any]:
    """One run in a worker process, its output in ``logs/<run>.log``."""
    with _logged(Path(out_dir) / "logs" / f"{spec.name}.log", f"run {spec.name}"):
        return {**run_one(spec, train, world_settings, base_dir, out_dir, queue), "numerics": numerics_record()}


def _worker_build_base(settings, log_path: str, queue) -> str:
    """Build (or find) the base model in a worker process, posting its steps for the parent's progress bar."""
    from .base_model import ensure_base_model

    def on_step(step: int) -> None:
        if step % 10 == 0 or step == settings.steps:
            queue.put((BASE_INDEX, "step", step))

    with _logged(Path(log_path), "building the base model"):
        queue.put((BASE_INDEX, "start", settings.steps))
        return str(ensure_base_model(settings, progress=False, on_step=on_step))


def _register(pids) -> None:
    """A worker's initializer: record its process id in the parent's list."""
    pids.append(os.getpid())


@contextlib.contextmanager
def _workers(display, max_workers: int):
    """A spawn-context process pool whose workers start with the pinned floating point, and a thread that feeds
    the workers' progress messages to ``display``."""
    import multiprocessing as mp
    import queue as queue_module
    import threading
    from concurrent.futures import ProcessPoolExecutor

    context = mp.get_context("spawn")
    manager = context.Manager()
    messages = manager.Queue()
    stop = threading.Event()

    def pump() -> None:
        while not stop.is_set() or not messages.empty():
            try:
                display.handle(messages.get(timeout=0.2))
            except queue_module.Empty:
                continue
            except (EOFError, OSError):
                return

    thread = threading.Thread(target=pump, daemon=True)
    thread.start()
    # Every worker posts its process id when it starts, so that a failure can stop the workers through public
    # API (the pool's own map of its processes is private).
    pids = manager.list()
    pool = ProcessPoolExecutor(max_workers=max_workers, mp_context=context, initializer=_register, initargs=(pids,))
    try:
        # Workers are spawned on submit, inside this block: they inherit the pin, the caller gets its
        # environment back afterwards.
        with pinned_environment():
            yield pool, messages
        pool.shutdown(wait=True)
    except BaseException:
        # Ctrl-C or a failed run: do not leave workers training in the background.
        started = list(pids)
        pool.shutdown(wait=False, cancel_futures=True)
        for pid in started:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        raise
    finally:
        stop.set()
        thread.join(timeout=5)
        display.close()
        manager.shutdown()


def build_base(settings, out_dir: str | Path, progress: bool = True) -> Path:
    """The cached base model of ``settings``, built in a worker process when absent (log in ``logs/``)."""
    log_path = Path(out_dir) / "logs" / "base-model.log"
    with _workers(BaseProgress(progress), 1) as (pool, messages):
        return Path(pool.submit(_worker_build_base, settings, str(log_path), messages).result())


def execute(
    specs: list[RunSpec],
    train: TrainSettings,
    world_settings: WorldSettings,
    base_dir: str | Path,
    out_dir: str | Path,
    jobs: int = 2,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Run every spec in ``jobs`` worker processes, the longest first (:func:`start_order`); results in the order
    of ``specs``."""
    results: dict[int, dict[str, Any]] = {}
    display = RunProgress(specs, train.epochs, progress)
    with _workers(display, max(1, min(jobs, len(specs)))) as (pool, messages):
        futures = {
            pool.submit(_worker_run, spec, train, world_settings, str(base_dir), str(out_dir), messages): spec
            for spec in start_order(specs)
        }
        for future, spec in futures.items():
            results[spec.index] = future.result()
    return [results[s.index] for s in specs]


# A run's time relative to plain LoRA's (10 epochs, one core each, pinned; docs/demo.md "Timings"): gradient mode
# adds a forward and backward per step, replay and the placebo add 5 % rows, full fine-tuning trains every weight.
_RELATIVE_COST = {"gradient": 1.6, "extra_rows": 1.05, "full": 1.3}


def estimated_cost(spec: RunSpec) -> float:
    """A run's time relative to plain LoRA's, for scheduling only (the numbers do not depend on the order)."""
    method = spec.method
    cost = _RELATIVE_COST["gradient"] if method.anchor == "gradient" else 1.0
    if method.extra_rows:
        cost *= _RELATIVE_COST["extra_rows"]
    if method.full:
        cost *= _RELATIVE_COST["full"]
    return cost


def start_order(specs: list[RunSpec]) -> list[RunSpec]:
    """The longest runs first (stable among equals), so that no long run starts last and runs alone while the
    other workers idle: each run's numbers are a function of its settings, so the order changes only the wall
    time."""
    return sorted(specs, key=lambda spec: -estimated_cost(spec))
