"""The demo's pinned floating point: the same bits whatever CPU the workers run on, except one op.

Measured on both CPU families (``tests/demo/numerics/``: the digests of one pinned base-model training step, op by
op, recorded on an AMD EPYC Zen 3 and an Intel Xeon of the Sapphire Rapids class): every op gives the same bits
except torch's non-fused AdamW step, whose ``exp_avg_sq.sqrt()`` goes through MKL's ``vsSqrt`` (not correctly
rounded in MKL's COMPATIBLE branch, and rounded differently by vendor). Torch's fused AdamW is exact under every
MKL branch; the probe and TRL's default optimizer use it, the base-model build does not (docs/demo.md).
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from slowed_plugin.demo import numerics
from slowed_plugin.demo.numerics import PINNED_ENV, pinned_env, pinned_environment
from slowed_plugin.demo.probe import PROBE_SHA256

DIGESTS = Path(__file__).with_name("numerics")
# The op digests recorded on each CPU family, by /proc/cpuinfo's vendor_id.
RECORDED = {"AuthenticAMD": DIGESTS / "amd-epyc-zen3.txt", "GenuineIntel": DIGESTS / "intel-xeon-spr.txt"}

x86_only = pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="the pin is for x86-64 CPUs")

# What a CPU without AVX-512 runs (AMD EPYC Zen 2/3, older Intel), emulated on this one.
NO_AVX512 = {"MKL_ENABLE_INSTRUCTIONS": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}
_PROBE = "from slowed_plugin.demo.probe import probe_digest; print(probe_digest())"


def test_pinned_environment_sets_the_pin_and_gives_the_caller_its_environment_back(monkeypatch):
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx512")
    monkeypatch.delenv("MKL_CBWR", raising=False)
    with pinned_environment():
        assert {k: os.environ[k] for k in PINNED_ENV} == PINNED_ENV
    assert os.environ["ATEN_CPU_CAPABILITY"] == "avx512"
    assert "MKL_CBWR" not in os.environ
    # a user's own dispatch setting does not survive into a pinned worker
    assert pinned_env({"ATEN_CPU_CAPABILITY": "default", "PATH": "/bin"})["ATEN_CPU_CAPABILITY"] == "avx2"


def test_describe_says_whether_other_cpus_give_the_same_numbers():
    record = {"cpu": "X", "torch": "2.13.0", "aten_cpu_capability": "AVX2", "mkl_cbwr": "COMPATIBLE", "threads": 1}
    assert "the same numbers on any x86-64 CPU" in numerics.describe({**record, "pinned": True})
    assert "can differ" in numerics.describe({**record, "pinned": False})


class _Display:
    def handle(self, message) -> None:
        pass

    def close(self) -> None:
        pass


@x86_only
def test_demo_workers_start_pinned_and_record_it(monkeypatch):
    from slowed_plugin.demo.workers import _workers

    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "default")  # a user's setting: the workers override it
    with _workers(_Display(), 1) as (pool, _):
        record = pool.submit(numerics.numerics_record).result()
    assert record["pinned"] is True
    assert (record["aten_cpu_capability"], record["mkl_cbwr"], record["threads"]) == ("AVX2", "COMPATIBLE", 1)
    assert os.environ["ATEN_CPU_CAPABILITY"] == "default"  # the caller's environment is back


def _probes(envs: list[dict[str, str]]) -> list[str]:
    """probe_digest() in one fresh process per environment, run side by side."""
    procs = [
        subprocess.Popen([sys.executable, "-c", _PROBE], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for env in envs
    ]
    digests = []
    for proc in procs:
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err.decode()[-2000:]
        digests.append(out.decode().split()[-1])
    return digests


def _native_env() -> dict[str, str]:
    """This process's environment without the pin or an emulation; one thread, as the pin has."""
    native = {k: v for k, v in os.environ.items() if k not in (*PINNED_ENV, "MKL_ENABLE_INSTRUCTIONS")}
    return {**native, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@x86_only
def test_a_short_piece_of_the_pipeline_has_the_recorded_bits():
    """A few base-model steps, a few LoRA steps and a greedy generation, pinned, both optimizers fused: the bits
    recorded in the repository (on Intel; on AMD every op of it gave the same bits as on Intel, see below)."""
    assert _probes([pinned_env(_native_env())]) == [PROBE_SHA256]


def _digest_lines(text: str) -> dict[str, str]:
    """``op digest`` lines of an op-digest file, without the ``# cpu`` comment (which names the machine)."""
    pairs = (line.split(" ", 1) for line in text.splitlines() if line.strip() and not line.startswith("# cpu"))
    return dict(pairs)  # type: ignore[arg-type]


def _vendor() -> str | None:
    try:
        with open("/proc/cpuinfo") as info:
            return next((line.split(":", 1)[1].strip() for line in info if line.startswith("vendor_id")), None)
    except OSError:
        return None


@x86_only
def test_every_op_of_a_pinned_training_step_has_the_bits_recorded_for_this_cpu_family():
    """The op digests of one pinned base-model step on this machine equal, line for line, the file recorded on
    a CPU of the same vendor."""
    recorded = RECORDED.get(_vendor() or "")
    if recorded is None:
        pytest.skip(f"no op digests recorded for CPU vendor {_vendor()!r}")
    proc = subprocess.run(
        [sys.executable, str(DIGESTS / "op_digests.py")], capture_output=True, text=True, timeout=600, env=_native_env()
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    mine, theirs = _digest_lines(proc.stdout), _digest_lines(recorded.read_text())
    assert mine.keys() == theirs.keys()
    assert [name for name in mine if mine[name] != theirs[name]] == []


def test_the_two_cpu_families_part_only_in_the_non_fused_adamw_step():
    """The recorded files differ exactly where MKL's vector square root enters: the non-fused AdamW step
    (``prim.adamw_step``, and ``step.*`` of the weight matrices; the 1-D norm weights happen to round alike).
    Every primitive, the tokenizer, the initial weights, every forward output, the loss, every gradient and the
    clipped norm agree."""
    amd, intel = (_digest_lines(RECORDED[v].read_text()) for v in ("AuthenticAMD", "GenuineIntel"))
    assert amd.keys() == intel.keys()
    differ = {name for name in amd if amd[name] != intel[name]}
    assert differ, "the families' files are equal: the finding (and docs/demo.md) no longer hold"
    assert {name for name in differ if not name.startswith("step.")} == {"prim.adamw_step"}
    assert all(name.endswith(".weight") and "norm" not in name for name in differ - {"prim.adamw_step"})


_ADAMW = """
import hashlib, torch
torch.set_num_threads(1)
g = torch.Generator().manual_seed(0)
p0, grad = torch.randn(300, 200, generator=g).abs() + 0.1, torch.randn(300, 200, generator=g)
out = []
for fused in (False, True):
    p = p0.clone().requires_grad_(True)
    opt = torch.optim.AdamW([p], lr=1e-2, weight_decay=0.01, **({"fused": True} if fused else {}))
    for _ in range(3):
        p.grad = grad.clone()
        opt.step()
    out.append(hashlib.sha256(p.detach().numpy().tobytes()).hexdigest()[:16])
print(*out)
"""


@x86_only
def test_fused_adamw_has_the_same_bits_under_every_mkl_branch_and_the_default_one_does_not():
    """Why the probe's optimizers are fused: the fused kernel's square root is ATen's own (exact), so MKL's
    branch does not reach it; the default AdamW's goes through MKL's vsSqrt, whose COMPATIBLE branch rounds
    otherwise than its AVX2 one (and otherwise on AMD than on Intel)."""
    base = {**_native_env(), "ATEN_CPU_CAPABILITY": "avx2"}
    digests = []
    for branch in ("COMPATIBLE", "AUTO", "AVX2"):
        proc = subprocess.run(
            [sys.executable, "-c", _ADAMW], env={**base, "MKL_CBWR": branch}, capture_output=True, text=True
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        digests.append(proc.stdout.split())
    default, fused = zip(*digests, strict=True)
    assert len(set(fused)) == 1
    assert default[0] != default[2]  # COMPATIBLE vs AVX2: the non-fused step depends on MKL's branch


@pytest.mark.slow
@x86_only
def test_without_the_pin_the_emulated_dispatch_changes_the_bits():
    """The control of the test above: unpinned, the emulation does change the bits, so the equality is not
    vacuous (on an AVX-512 CPU; without AVX-512 the emulation is the native dispatch)."""
    if "avx512f" not in _cpu_flags():
        pytest.skip("no AVX-512 here: the emulated dispatch is the native one")
    native = _native_env()
    unpinned_native, unpinned_no_avx512 = _probes([native, {**native, **NO_AVX512}])
    assert unpinned_native != unpinned_no_avx512
    assert PROBE_SHA256 not in (unpinned_native, unpinned_no_avx512)


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as info:
            return {f for line in info if line.startswith("flags") for f in line.split(":", 1)[1].split()}
    except OSError:
        return set()


def test_the_report_says_whether_the_base_model_has_the_documented_weights():
    from slowed_plugin.demo.base_model import REFERENCE_SHA256
    from slowed_plugin.demo.report import _reference_note

    assert "bit for bit" in _reference_note({"state_sha256": REFERENCE_SHA256, "reference_sha256": REFERENCE_SHA256})
    assert "NOT the documented" in _reference_note({"state_sha256": "0" * 64, "reference_sha256": REFERENCE_SHA256})
    assert _reference_note({"state_sha256": "0" * 64, "reference_sha256": None}) == ""  # other settings


@pytest.mark.slow
@x86_only
def test_the_products_compiled_loss_matches_its_reference_inside_a_pinned_worker():
    """torch.compile's CPU code was wrong under ATEN_CPU_CAPABILITY=avx2 on an AVX-512 CPU: the pin turns
    compilation off. The product's own reference test of the masked loss, run with the pinned environment."""
    test = "tests/core/test_logits_loss.py::test_matches_reference"
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", test, "-k", "compiled and fp32"],
        env=pinned_env(_native_env()),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:]
