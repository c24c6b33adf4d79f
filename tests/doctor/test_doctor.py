"""``slowed doctor``: each check against the reference and against a deliberately broken input (so it can fail),
the exit codes, and the real command on CPU."""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from installed import require

from slowed_plugin import versions
from slowed_plugin.cli import main
from slowed_plugin.doctor import bench, quantized
from slowed_plugin.doctor import kernels as doctor_kernels
from slowed_plugin.doctor.findings import Finding, exit_code

ROOT = Path(__file__).resolve().parents[2]


# --------------------------------------------------------------------------- versions
def test_versions_come_from_the_declared_ranges():
    found = {f.package: f for f in versions.version_findings()}
    assert found["torch"].required and found["torch"].supported.startswith(">=")
    assert not found["trl"].required and not found["bitsandbytes"].required
    assert "matplotlib" not in found  # the demo's tools are not SLowED's dependencies
    assert all(f.ok for f in found.values())  # this venv is the supported stack
    assert found["torch"].line().startswith("ok   torch ")


def test_versions_from_pyproject_when_not_installed(monkeypatch):
    installed = {f.package: f.supported for f in versions.version_findings()}

    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "requires", missing)
    assert {f.package: f.supported for f in versions.version_findings()} == installed


def test_a_version_outside_the_range_and_a_missing_one_fail(monkeypatch):
    fake = {"transformers": "4.40.0", "peft": None, "trl": None, "deepspeed": "0.10.0"}
    real = versions._installed
    monkeypatch.setattr(versions, "_installed", lambda name: fake[name] if name in fake else real(name))
    found = {f.package: f for f in versions.version_findings()}
    assert not found["transformers"].ok and "OUTSIDE" in found["transformers"].line()
    assert not found["peft"].ok and "not installed (required" in found["peft"].line()
    assert found["trl"].ok  # optional and absent
    assert not found["deepspeed"].ok  # optional but installed outside its range


# --------------------------------------------------------------------------- kernels
def test_tolerance_error():
    ref = torch.tensor([1.0, 2.0])
    assert doctor_kernels.tolerance_error(ref.clone(), ref, rtol=1e-5, atol=1e-6) == 0.0
    assert doctor_kernels.tolerance_error(ref * 1.001, ref, rtol=1e-5, atol=1e-6) > 1
    assert doctor_kernels.tolerance_error(ref * float("nan"), ref, rtol=1, atol=1) == float("inf")


@pytest.mark.parametrize("path", ["logits", "hidden_states"])
def test_each_fused_path_matches_the_reference(path):
    with doctor_kernels.eager_kernels():
        finding = doctor_kernels._run(path, "eager", "fp32", "cpu")
    assert finding.status == "ok", finding.line()
    assert finding.data["loss_err"] <= 1 and finding.data["same_mask"]


def _perturbed_loss(monkeypatch, name, factor=1.001):
    original = getattr(doctor_kernels, name)

    def perturbed(*args, **kwargs):
        loss, *rest = original(*args, **kwargs)
        return (loss * factor, *rest)

    monkeypatch.setattr(doctor_kernels, name, perturbed)


@pytest.mark.parametrize(
    "path, name", [("logits", "fused_masked_causal_lm_loss"), ("hidden_states", "chunked_masked_causal_lm_loss")]
)
def test_a_loss_beyond_tolerance_fails(monkeypatch, path, name):
    _perturbed_loss(monkeypatch, name)
    with doctor_kernels.eager_kernels():
        finding = doctor_kernels._run(path, "eager", "fp32", "cpu")
    assert finding.status == "FAIL" and finding.data["loss_err"] > 1, finding.line()


def test_a_different_mask_fails(monkeypatch):
    original = doctor_kernels.fused_masked_causal_lm_loss

    def other_ratio(logits, labels, ratio, *args, **kwargs):
        return original(logits, labels, 0.5, *args, **kwargs)

    monkeypatch.setattr(doctor_kernels, "fused_masked_causal_lm_loss", other_ratio)
    with doctor_kernels.eager_kernels():
        finding = doctor_kernels._run("logits", "eager", "fp32", "cpu")
    assert finding.status == "FAIL" and "mask DIFFERENT" in finding.message


def test_a_crashing_path_is_a_finding(monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("no kernel image is available for execution on the device")

    monkeypatch.setattr(doctor_kernels, "chunked_masked_causal_lm_loss", boom)
    finding = doctor_kernels._run("hidden_states", "eager", "bf16", "cpu")
    assert finding.status == "FAIL" and "no kernel image" in finding.message


def test_the_command_exits_1_on_a_kernel_beyond_tolerance(monkeypatch, capsys, tmp_path):
    # Compiling switched off (as SLOWED_COMPILE=0 does): eager only (fast); the compiled kernels' line says so.
    monkeypatch.setattr(doctor_kernels.KERNELS, "compile", False)
    _perturbed_loss(monkeypatch, "chunked_masked_causal_lm_loss", factor=1.01)
    report = tmp_path / "doctor.json"
    assert main(["doctor", "--device", "cpu", "--json", str(report)]) == 1
    out = capsys.readouterr().out
    assert "FAIL kernels.hidden_states.eager.fp32" in out
    assert "ok   kernels.logits.eager.fp32" in out
    assert "warn kernels.compile: SLOWED_COMPILE=0" in out
    assert "skip qlora.4bit: needs a CUDA GPU" in out
    data = json.loads(report.read_text())
    assert data["exit_code"] == 1 and data["counts"]["FAIL"] == 2  # fp32 and bf16


def test_compile_failure_is_said_loudly(monkeypatch):
    monkeypatch.setattr(doctor_kernels.KERNELS, "compile", True)
    monkeypatch.setattr(doctor_kernels, "warmup", lambda *a, **k: 0.0)
    monkeypatch.setattr(doctor_kernels.KERNELS, "failed", "InvalidCxxCompiler: No working C++ compiler found")
    monkeypatch.setattr(doctor_kernels, "CASES", {"logits": doctor_kernels.CASES["logits"]})
    found = {f.check: f for f in doctor_kernels.kernel_findings("cpu", dtypes=("fp32",))}
    assert found["kernels.compile"].status == "warn"
    assert "COMPILE FAILED" in found["kernels.compile"].message and "EAGER FALLBACK" in found["kernels.compile"].message
    assert found["kernels.logits.compiled.fp32"].status == "ok"  # the fallback's numbers are still checked


# --------------------------------------------------------------------------- device, bad input
def test_cuda_requested_without_a_gpu_fails(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["doctor", "--device", "cuda", "--skip-kernels"]) == 1
    assert "FAIL device: --device cuda, but torch.cuda.is_available() is False" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, says",
    [
        (["--device", "tpu"], "--device 'tpu' is not one of auto, cpu, cuda"),
        (["--bench-shape", "llama-70b"], "--bench-shape 'llama-70b' is not one of"),
        (["--bench-pairs", "0"], "--bench-pairs must be at least 1; got 0"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(capsys, argv, says):
    assert main(["doctor", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert says in err and len(err.splitlines()) == 1


def test_bench_without_trl_says_which_extra(monkeypatch, capsys):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "trl" else real(name, *a))
    assert main(["doctor", "--bench"]) == 2
    assert "pip install 'slowed-plugin[trl]'" in capsys.readouterr().err


# --------------------------------------------------------------------------- 4-bit
def test_4bit_is_skipped_on_cpu_and_without_bitsandbytes(monkeypatch):
    (finding,) = quantized.quantized_findings("cpu")
    assert finding.status == "skip" and "needs a CUDA GPU" in finding.message
    assert exit_code([finding]) == 0
    monkeypatch.setattr(quantized.importlib.util, "find_spec", lambda name: None)
    (finding,) = quantized.quantized_findings("cuda")
    assert finding.status == "skip" and "slowed-plugin[bnb]" in finding.message


@pytest.mark.slow
def test_4bit_lora_under_slowed_on_cpu():
    require("bitsandbytes", "bnb")
    (finding,) = quantized.quantized_findings("cpu", force=True)
    assert finding.status == "ok", finding.line()
    assert finding.data["lora_layers"] == finding.data["quantized_layers"] == 14
    assert finding.data["projected"] > 0 and finding.data["max_norm_after"] <= finding.data["tau"] * (1 + 1e-4)


@pytest.mark.parametrize(
    "change, says",
    [
        ({"max_norm_after": 0.2, "projected": 0}, "an adapter outside tau after the projection"),
        ({"lora_layers": 0}, "0 LoRA layers on 14 4-bit layers"),
        ({"losses": [7.0, float("nan")]}, "a non-finite loss"),
    ],
)
def test_4bit_fails_on_a_broken_result(monkeypatch, change, says):
    require("bitsandbytes", "bnb")
    good = dict(quantized_layers=14, lora_layers=14, losses=[7.0, 6.9], projected=14, adapters=14)
    result = quantized.QuantizedResult(**{**good, "max_norm_after": 0.05, "tau": 0.05, **change})
    monkeypatch.setattr(quantized, "run_4bit", lambda device: result)
    (finding,) = quantized.quantized_findings("cpu", force=True)
    assert finding.status == "FAIL" and says in finding.message, finding.line()


# --------------------------------------------------------------------------- bench
def _fake_runs(**kwargs):
    return {
        "stock": {"step_times": [3.0, 1.0, 1.0, 1.2], "peak_mib": 1000.0, "process_s": 9.0},
        "slowed": {"step_times": [4.0, 0.9, 1.1, 1.2], "peak_mib": 900.0, "process_s": 9.0},
    }


def test_bench_prints_ratios_and_never_judges_speed(monkeypatch):
    monkeypatch.setattr(bench, "run_in_subprocess", _fake_runs)
    found = {f.check: f for f in bench.bench_findings("cpu", "tiny", pairs=3)}
    ratio = found["bench.ratio.slowed"]
    assert ratio.status == "ok"
    assert ratio.data["per_pair"] == pytest.approx([0.9, 1.1, 1.0])
    assert "step time x1.00 (per pair 0.90-1.00-1.10), peak memory x0.90" in ratio.message
    assert found["bench.stock"].data["tokens_per_s"] == pytest.approx(128 / 1.0)


def test_bench_failure_is_a_finding(monkeypatch):
    def fails(**kwargs):
        raise RuntimeError("step pairs failed (exit 1): RuntimeError: variant slowed: CUDA out of memory")

    monkeypatch.setattr(bench, "run_in_subprocess", fails)
    (finding,) = bench.bench_findings("cuda", "qwen2.5-0.5b")
    assert finding.status == "FAIL" and "out of memory" in finding.message


def test_findings_exit_code():
    assert exit_code([Finding("a", "ok", ""), Finding("b", "warn", ""), Finding("c", "skip", "")]) == 0
    assert exit_code([Finding("a", "ok", ""), Finding("b", "FAIL", "")]) == 1


# --------------------------------------------------------------------------- the real command
@pytest.mark.slow
def test_slowed_doctor_on_cpu(tmp_path):
    """The command as a user runs it (kernels compiled, the tiny bench): every check passes, exit 0."""
    report = tmp_path / "doctor.json"
    scratch = tmp_path / "tmp"  # the command's temporary files: none may be left behind
    scratch.mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TMPDIR": str(scratch)}
    env.pop("SLOWED_COMPILE", None)
    done = subprocess.run(
        [sys.executable, "-m", "slowed_plugin.cli", "doctor", "--device", "cpu", "--bench", "--bench-shape", "tiny",
         "--bench-pairs", "1", "--json", str(report)],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    found = {f["check"]: f for f in json.loads(report.read_text())["findings"]}
    fused_head = "kernels.fused_lm_head.fp32"
    kernels = [c for c in found if c.startswith("kernels.") and c not in ("kernels.compile", fused_head)]
    assert len(kernels) == 8 and all(found[c]["status"] == "ok" for c in kernels)
    from slowed_plugin.trainer.private_api import fused_lm_head_trl

    assert found[fused_head]["status"] == ("ok" if fused_lm_head_trl() else "skip")
    assert found["kernels.compile"]["status"] == "ok" and found["kernels.compile"]["data"]["compiled"]
    assert found["qlora.4bit"]["status"] == "skip"
    assert found["bench.ratio.slowed"]["data"]["step_time_ratio"] > 0
    assert done.stdout.strip().splitlines()[-2].startswith("slowed doctor: ")
    assert not list(scratch.glob("slowed-*")), list(scratch.iterdir())  # the bench's trainers' output folders


def test_step_pairs_refuse_to_fork_after_cuda_started(monkeypatch):
    from slowed_plugin.bench import step_pairs

    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    with pytest.raises(RuntimeError, match="has not initialised CUDA"):
        step_pairs.run_pairs("tiny", "float32", 1, 1, 8, device="cuda")
    with pytest.raises(ValueError, match="`variants` must be among"):
        step_pairs.run_pairs("tiny", "float32", 1, 1, 8, variants=("stock", "turbo"))


def test_the_fused_lm_head_check_matches_trl_or_says_why_not():
    """TRL 1.15+: SLowED's masked answer against TRL's own fused head on the masked labels, ok on CPU; older TRL:
    one skip line naming the version it needs (issue 30)."""
    from slowed_plugin.doctor import fused_head
    from slowed_plugin.trainer.private_api import fused_lm_head_trl

    (finding,) = fused_head.fused_head_findings("cpu")
    if not fused_lm_head_trl():
        assert finding.status == "skip" and "1.15.0+" in finding.message
        return
    assert finding.status == "ok", finding.line()
    assert finding.data["mask_equal"] and 0 < finding.data["kept"] < finding.data["candidates"]
    assert max(finding.data[k] for k in ("log_probs", "loss", "grad")) <= 1


@pytest.mark.skipif(
    not __import__("slowed_plugin.trainer.private_api", fromlist=["x"]).fused_lm_head_trl(),
    reason="TRL < 1.15 has no fused LM head (trl.trainer.utils.add_fused_lm_head)",
)
def test_the_fused_lm_head_check_fails_on_a_wrong_mask(monkeypatch):
    """A mask that is not SLowED's (here: nothing dropped on TRL's side) is a FAIL, not an ok."""
    from slowed_plugin.core import masking
    from slowed_plugin.doctor import fused_head

    monkeypatch.setattr(masking, "mask_low_entropy_targets", lambda logits, labels, *a, **k: (labels[:, 1:], None))
    (finding,) = fused_head.fused_head_findings("cpu")
    assert finding.status == "FAIL" and "DIFFERS" in finding.message
