"""The demo's pinned floating point: the same bits whatever CPU the workers run on.

There is one CPU family on the test machine, so other CPUs are emulated by dispatch settings: MKL's
``MKL_ENABLE_INSTRUCTIONS=AVX2`` (MKL's code for a CPU without AVX-512, as on AMD EPYC Zen 2/3) and ATen's
``ATEN_CPU_CAPABILITY``. That is an emulation, not another CPU: AMD's own MKL dispatch is covered by MKL's
documented guarantee for its COMPATIBLE branch, which the pin uses.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

from slowed_plugin.demo import numerics
from slowed_plugin.demo.numerics import PINNED_ENV, PROBE_SHA256, pinned_env, pinned_environment

x86_only = pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="the pin is for x86-64 CPUs")

# What a CPU without AVX-512 runs (AMD EPYC Zen 2/3, older Intel), emulated on this one.
NO_AVX512 = {"MKL_ENABLE_INSTRUCTIONS": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}
_PROBE = "from slowed_plugin.demo.numerics import probe_digest; print(probe_digest())"


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
def test_a_short_piece_of_the_pipeline_has_the_recorded_bits_under_every_emulated_dispatch():
    """A few base-model steps, a few LoRA steps and a greedy generation, pinned: this CPU's native dispatch and
    the emulated no-AVX-512 one give the bits recorded in the repository."""
    native = _native_env()
    assert _probes([pinned_env(native), pinned_env({**native, **NO_AVX512})]) == [PROBE_SHA256, PROBE_SHA256]


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
