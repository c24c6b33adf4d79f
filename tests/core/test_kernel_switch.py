"""The kernels' compile switch is explicit: SLOWED_COMPILE is read when the process imports the kernels, not on
every call, and code that wants the eager kernels for a while says so (issue 32, item 6)."""

from __future__ import annotations

from slowed_plugin.core import kernels


def test_the_environment_is_read_once_not_on_every_call(monkeypatch):
    switch = kernels._Kernels(compile=True)
    monkeypatch.setenv("SLOWED_COMPILE", "0")
    assert switch.enabled  # a change of the environment later does not flip a running process
    assert not kernels._Kernels().compile  # a new process (a new instance) reads it
    monkeypatch.setenv("SLOWED_COMPILE", "1")
    assert kernels._Kernels().compile


def test_switched_puts_the_previous_switch_back_even_on_error():
    switch = kernels._Kernels(compile=True)
    try:
        with switch.switched(compile=False):
            assert not switch.enabled
            raise KeyError("boom")
    except KeyError:
        pass
    assert switch.enabled
    switch.failed = "no compiler"
    with switch.switched(compile=True):
        assert not switch.enabled  # a compiler that failed stays failed for the process


def test_the_doctor_forces_eager_without_touching_the_environment(monkeypatch):
    from slowed_plugin.doctor import kernels as doctor_kernels

    monkeypatch.delenv("SLOWED_COMPILE", raising=False)
    with doctor_kernels.eager_kernels():
        assert not doctor_kernels.KERNELS.enabled
        import os

        assert "SLOWED_COMPILE" not in os.environ
