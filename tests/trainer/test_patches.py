"""What SLowED changes in a Trainer (slowed_plugin.trainer.patches): installed at attach, undone at train end,
by `detach()`, or when the callback is removed; an unknown `get_batch_samples` is refused with a clear message."""

from __future__ import annotations

import pytest
from installed import require
from trl_helpers import history, sft_trainer

from slowed_plugin import SLowEDCallback
from slowed_plugin.trainer.private_api import fused_lm_head_trl

PATCHED_ON_TRAINER = ("get_batch_samples", "log", "save_model")


def _own(obj, name):
    return name in vars(obj)


def _slowed_forward(model) -> bool:
    """Whether the model's forward is SLowED's (TRL's chunked_nll installs a forward of its own, which stays)."""
    forward = vars(model).get("forward")
    return forward is not None and getattr(forward, "__func__", forward).__module__.startswith("slowed_plugin")


def test_patches_named_while_training_and_undone_at_train_end(llama_dir, cot_rows, tmp_path):
    from transformers import TrainerCallback

    seen = {}

    class Spy(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            seen.setdefault("names", list(callback.patches.names))
            seen.setdefault("own", {name: _own(trainer, name) for name in PATCHED_ON_TRAINER})
            seen.setdefault("forward", _slowed_forward(trainer.model.get_base_model()))

    callback = SLowEDCallback(tau=0.05, mask_ratio=0.3)
    trainer = sft_trainer(llama_dir, cot_rows[:8], tmp_path, [callback, Spy()], max_steps=2)
    trainer.train()
    # TRL 1.15+ wraps the forward with its fused LM head after SLowED attached: masking goes on top at train begin.
    again = ["forward"] if fused_lm_head_trl() else []
    assert seen["names"] == ["forward", "get_batch_samples", "save_model", "log", *again]
    assert all(seen["own"].values()) and seen["forward"]
    # After training every attribute is the class's own again.
    assert not any(_own(trainer, name) for name in PATCHED_ON_TRAINER)
    assert not _slowed_forward(trainer.model.get_base_model())
    assert not callback.patches.active
    assert history(trainer, "slowed/masked_fraction")  # it did train with SLowED


def test_second_train_call_installs_again(llama_dir, cot_rows, tmp_path):
    callback = SLowEDCallback(tau=None, mask_ratio=0.3)
    trainer = sft_trainer(llama_dir, cot_rows[:8], tmp_path, [callback], max_steps=1)
    trainer.train()
    trainer.args.max_steps = 2
    trainer.train(resume_from_checkpoint=None)
    rows = history(trainer, "slowed/masked_fraction")
    assert len(rows) >= 1 and all(0.2 < f <= 0.3 for f in rows)


def test_custom_loss_is_restored_after_training(llama_dir, cot_rows, tmp_path):
    from transformers.loss.loss_utils import ForCausalLMLoss

    def my_loss(outputs, labels, num_items_in_batch=None):
        return ForCausalLMLoss(outputs.logits, labels, outputs.logits.shape[-1], num_items_in_batch=num_items_in_batch)

    from trl import SFTTrainer

    class MyTrainer(SFTTrainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, compute_loss_func=my_loss, **kwargs)

    import trl

    original = trl.SFTTrainer
    trl.SFTTrainer = MyTrainer
    try:
        callback = SLowEDCallback(tau=None, mask_ratio=0.5)
        trainer = sft_trainer(llama_dir, cot_rows[:8], tmp_path, [callback], max_steps=1, loss_type="nll")
    finally:
        trl.SFTTrainer = original
    assert trainer.compute_loss_func is not my_loss
    trainer.train()
    assert trainer.compute_loss_func is my_loss and not _own(trainer, "compute_loss")
    assert 0.4 < history(trainer, "slowed/masked_fraction")[0] <= 0.5


def test_removed_callback_trains_plain_and_restores_everything(llama_dir, cot_rows, tmp_path):
    callback = SLowEDCallback(tau=0.05, mask_ratio=0.3)
    trainer = sft_trainer(llama_dir, cot_rows[:8], tmp_path, [callback], max_steps=2)
    trainer.remove_callback(callback)
    trainer.train()
    assert not history(trainer, "slowed/masked_fraction") and not history(trainer, "slowed/max_delta_norm")
    assert not any(_own(trainer, name) for name in PATCHED_ON_TRAINER)
    assert not _slowed_forward(trainer.model.get_base_model())


def test_detach_restores_the_trainer(llama_dir, cot_rows, tmp_path):
    callback = SLowEDCallback(tau=0.05, mask_ratio=0.3)
    trainer = sft_trainer(llama_dir, cot_rows[:8], tmp_path, [callback], max_steps=1)
    assert _own(trainer, "get_batch_samples")
    callback.detach()
    assert callback.trainer is None
    assert not any(_own(trainer, name) for name in PATCHED_ON_TRAINER)
    assert not _slowed_forward(trainer.model.get_base_model())


def test_unknown_get_batch_samples_signature_is_refused_at_construction(llama_dir, cot_rows, tmp_path):
    import trl

    class OtherVersion(trl.SFTTrainer):
        def get_batch_samples(self, epoch_iterator, num_batches, device, prefetch=True):
            return super().get_batch_samples(epoch_iterator, num_batches, device)

    original = trl.SFTTrainer
    trl.SFTTrainer = OtherVersion
    try:
        with pytest.raises(RuntimeError, match=r"needs transformers\.Trainer\.get_batch_samples .*does not know"):
            sft_trainer(llama_dir, cot_rows[:8], tmp_path, [SLowEDCallback(tau=None, mask_ratio=0.3)])
    finally:
        trl.SFTTrainer = original


def test_installed_private_signatures_are_known():
    """Every called row of the private-API table matches the installed transformers and TRL (the floors job runs
    this at the floors, the main job at Axolotl's pins: the table's "checked" versions)."""
    import importlib
    import inspect

    from slowed_plugin.trainer.private_api import TABLE

    called = [row for row in TABLE if row.signatures is not None]
    assert {row.name for row in called} >= {"get_batch_samples", "_get_num_items_in_batch", "_prepare_dataset"}
    for row in called:
        module, owner = row.owner.rsplit(".", 1)
        method = getattr(getattr(importlib.import_module(module), owner), row.name)
        assert tuple(inspect.signature(method).parameters)[1:] in row.signatures, row


def _snapshot(trainer) -> dict:
    """Every attribute of the trainer, its arguments and its model's forward, by identity, and its callbacks."""
    causal = trainer.model.get_base_model()
    return {
        "trainer": {k: id(v) for k, v in vars(trainer).items() if k != "callback_handler"},
        "args": dict(vars(trainer.args)),
        "forward": vars(causal).get("forward"),
        "callbacks": list(trainer.callback_handler.callbacks),
    }


def test_detach_leaves_the_trainer_as_it_was_before_attach(llama_dir, cot_rows, tmp_path):
    """Every change of the patches table (masking, Slow Tuning, anchor replay rows, the monitor callback) is undone."""
    from slowed_plugin.data import cot_tiny_rows

    prompts = [row["prompt"] for row in cot_tiny_rows()[60:70]]
    trainer = sft_trainer(llama_dir, cot_rows[:8], tmp_path, [], max_steps=1)
    before = _snapshot(trainer)
    callback = SLowEDCallback(
        tau=0.05,
        mask_ratio=0.3,
        safety_anchor={"prompts": prompts[:2], "benign_prompts": prompts[2:4], "max_new_tokens": 4, "ratio": 0.2},
        safety_monitor={"prompts": prompts[6:8], "max_new_tokens": 4, "eval_at_start": False},
    )
    trainer.add_callback(callback)
    callback.attach(trainer)
    during = _snapshot(trainer)
    assert during != before and callback.monitor in during["callbacks"]
    assert trainer.train_dataset is not None and len(trainer.train_dataset) > len(cot_rows[:8])
    callback.detach()
    trainer.remove_callback(callback)
    assert _snapshot(trainer) == before


def test_the_axolotl_step_recount_is_a_listed_change_undone_with_the_rows(monkeypatch):
    import types

    require("axolotl", "axolotl")
    import axolotl.utils.trainer

    from slowed_plugin.axolotl.anchor_row_format import step_recount
    from slowed_plugin.trainer.patches import Patches

    monkeypatch.setattr(axolotl.utils.trainer, "calculate_total_num_steps", lambda cfg, dataset: 12.0)
    cfg = {"total_num_tokens": 1000, "datasets": [], "sample_packing": True}  # with packing: Axolotl's count
    trainer = types.SimpleNamespace(args=types.SimpleNamespace(max_steps=10), train_dataset=[0] * 12)
    patches = Patches()
    step_recount(cfg, types.SimpleNamespace(info=lambda line: None))(patches, trainer)
    assert trainer.args.max_steps == 12 and cfg == {
        "total_num_tokens": None,
        "total_supervised_tokens": None,
        "datasets": [],
        "sample_packing": True,
    }
    assert patches.names == ["config['total_num_tokens']", "config['total_supervised_tokens']", "max_steps"]
    patches.undo()
    assert trainer.args.max_steps == 10 and cfg == {"total_num_tokens": 1000, "datasets": [], "sample_packing": True}


@pytest.mark.parametrize("drop_last", [False, True])
def test_the_recount_without_packing_is_the_trainers_own_count_of_whole_epochs(drop_last, tmp_path):
    """Issue 22: with the tiny recipe and the default anchor (91 rows, micro-batches of 4, accumulation 2, 2 epochs)
    Axolotl's formula ceil(rows * epochs / batch) gives 23 steps; the trainer runs 12 an epoch, and stopped at
    epoch 1.957. The recount is the number transformers' Trainer computes itself (``max_steps=-1``) from its
    dataloader, for every row count, batch shape and epoch count tried here."""
    import math
    import types

    from torch.utils.data import DataLoader
    from transformers import Trainer, TrainingArguments

    from slowed_plugin.axolotl.anchor_row_format import whole_epoch_steps

    assert whole_epoch_steps(91, 4, 2, 2) == 24 > math.ceil(91 * 2 / 8)  # the case, Axolotl's 23
    for rows in range(1, 26):
        for micro, accumulation, epochs in [(4, 2, 2), (1, 3, 1), (3, 4, 3), (2, 1, 2.5), (5, 2, 0.5)]:
            args = TrainingArguments(
                output_dir=str(tmp_path),
                per_device_train_batch_size=micro,
                gradient_accumulation_steps=accumulation,
                num_train_epochs=epochs,
                dataloader_drop_last=drop_last,
                use_cpu=True,
                report_to=[],
            )
            loader = DataLoader(list(range(rows)), batch_size=micro, drop_last=drop_last)
            if len(loader) == 0:
                continue
            stub = types.SimpleNamespace(
                get_total_train_batch_size=lambda a: a.per_device_train_batch_size * a.gradient_accumulation_steps,
                get_sp_size=lambda: 1,
                num_examples=lambda dl: len(dl.dataset),
            )
            trainer_count = Trainer.set_initial_training_values(stub, args, loader)[-1]
            assert whole_epoch_steps(rows, micro, accumulation, epochs, drop_last=drop_last) == trainer_count, (
                rows,
                micro,
                accumulation,
                epochs,
            )


def test_reading_active_changes_nothing():
    """`active` is a plain read (safe mid-forward); only `undo_if_unregistered` undoes, at a safe point."""
    import types

    from slowed_plugin.trainer.patches import Patches

    registered = [True]
    owner = types.SimpleNamespace(value=1)
    patches = Patches(registered=lambda: registered[0])
    patches.replace(owner, "value", lambda old: old + 1)
    registered[0] = False
    assert not patches.active and owner.value == 2  # passes through, but nothing was undone by the read
    assert not patches.undo_if_unregistered() and owner.value == 1


# Every assignment to an attribute of an object that is not `self` (outside patches.py, demo/ and the two loss
# files owned elsewhere), by file and target: what it changes. "runtime change" rows must be in patches.py's table
# (the attribute's name in its docstring); the others change an object SLowED built or the API's intended flags.
OWN = "an object SLowED built"
FLAG = "transformers' TrainerControl flags, the callbacks' intended API"
ASSIGNMENTS = {
    ("axolotl/check.py", "report.config"): OWN,
    ("axolotl/check.py", "report.plugin"): OWN,
    ("axolotl/guard.py", "hook.slowed_guard"): OWN,
    ("axolotl/guard.py", "sys.excepthook"): "runtime change",
    ("bench/qlora.py", "layer.weight"): OWN,
    ("bench/qlora.py", "layer.bias"): OWN,
    ("bench/qlora.py", "setattr(parent, name, layer)"): OWN,
    ("bench/qlora.py", "model.is_loaded_in_4bit"): OWN,
    ("bench/qlora.py", "model.config.use_cache"): OWN,
    ("core/lm_head.py", "head.forward"): "runtime change",
    ("doctor/kernels.py", "KERNELS.failed"): OWN,
    ("evaluation/generation.py", "tokenizer.padding_side"): "runtime change",
    ("evaluation/generation.py", "tokenizer.pad_token"): "runtime change",
    ("evaluation/judges.py", "tokenizer.pad_token"): OWN,
    ("evaluation/judges.py", "model.config.pad_token_id"): OWN,
    ("evaluation/safety.py", "result.generation_seconds"): OWN,
    ("evaluation/safety.py", "result.judge_seconds"): OWN,
    ("log.py", "logger.propagate"): OWN,
    ("tiny.py", "tokenizer.pre_tokenizer"): OWN,
    ("tiny.py", "tokenizer.post_processor"): OWN,
    ("tiny.py", "tokenizer.decoder"): OWN,
    ("trainer/callback.py", "control.should_log"): FLAG,
    ("trainer/monitor.py", "trainer.control.should_log"): FLAG,
    ("trainer/monitor.py", "handler.callbacks"): "runtime change",
    ("trainer/monitor.py", "self.judge.device"): OWN,
    ("trainer/monitor.py", "self.states.log"): OWN,
    ("trainer/safe_states.py", "control.should_training_stop"): FLAG,
    ("trainer/safe_states.py", "control.should_save"): FLAG,
    ("trainer/safety_anchor.py", "p.grad"): "the anchor's gradient projection: set and put back within one call",
}
SKIPPED = ("demo/", "trainer/patches.py", "core/hidden_states_loss.py", "core/logits_loss.py")


def _assignments() -> set[tuple[str, str]]:
    import ast
    from pathlib import Path

    package = Path(__file__).resolve().parents[2] / "slowed_plugin"
    found = set()
    for path in package.rglob("*.py"):
        name = path.relative_to(package).as_posix()
        if name.startswith(SKIPPED):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets = node.targets if isinstance(node, ast.Assign) else []
            if isinstance(node, (ast.AugAssign, ast.AnnAssign)):
                targets = [node.target]
            while targets:
                target = targets.pop()
                if isinstance(target, (ast.Tuple, ast.List, ast.Starred)):
                    targets += target.elts if not isinstance(target, ast.Starred) else [target.value]
                    continue
                attribute = target.value if isinstance(target, ast.Subscript) else target  # os.environ[...] too
                receiver = getattr(attribute, "value", None)
                if isinstance(attribute, ast.Attribute) and not (
                    isinstance(receiver, ast.Name) and receiver.id in ("self", "cls")
                ):
                    found.add((name, ast.unparse(attribute)))
            call = node.func if isinstance(node, ast.Call) else None
            if isinstance(call, ast.Name) and call.id in ("setattr", "delattr"):
                found.add((name, ast.unparse(node)))
    return found


def test_every_change_to_another_librarys_object_is_in_the_patches_table():
    """Front ends hand their settings to SLowEDCallback's constructor (no attribute set after it), and every
    run-time change outside patches.py is a row of its table (issue 32, item 3)."""
    from slowed_plugin.trainer import patches

    found = _assignments()
    assert found <= set(ASSIGNMENTS), f"not listed here: {sorted(found - set(ASSIGNMENTS))}"
    assert set(ASSIGNMENTS) <= found, f"gone, remove: {sorted(set(ASSIGNMENTS) - found)}"
    table = patches.__doc__
    missing = [t for (f, t), why in ASSIGNMENTS.items() if why == "runtime change" and t.split(".")[-1] not in table]
    assert not missing, f"runtime changes missing from patches.py's table: {missing}"


def test_front_ends_configure_the_callback_through_its_constructor():
    from slowed_plugin import SLowEDCallback

    def recount(patches, trainer):
        return None

    callback = SLowEDCallback(
        tau=1.0, mask_ratio=0.2, log="LOG", announce_start=False, anchor_row_format=None, installers=[recount]
    )
    assert (callback.log, callback.announce_start, callback.installers) == ("LOG", False, [recount])
    assert callback.config.tau == 1.0
