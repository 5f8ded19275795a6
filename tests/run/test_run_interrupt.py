"""interrupt_deferred: a signal during the block waits for the block, then stops the run."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from mwnet.run import Terminated, interrupt_deferred, sigterm_as_interrupt

pytestmark = pytest.mark.skipif(os.name != "posix", reason="needs POSIX signals to self")


def deliver(signum: int) -> None:
    """Send ``signum`` to this process and let the Python-level handler run."""
    os.kill(os.getpid(), signum)
    for _ in range(100):  # handlers run between bytecodes of the main thread
        time.sleep(0.001)


def test_sigint_is_deferred_until_the_block_ends(capsys: pytest.CaptureFixture[str]) -> None:
    steps = []
    with pytest.raises(KeyboardInterrupt), interrupt_deferred():
        steps.append("before")
        deliver(signal.SIGINT)
        steps.append("after")
    assert steps == ["before", "after"]
    assert "finishing the checkpoint, then stopping" in capsys.readouterr().err


def test_deferred_sigterm_is_a_keyboard_interrupt_with_exit_code_143() -> None:
    finished = False
    with pytest.raises(KeyboardInterrupt) as info, interrupt_deferred():
        deliver(signal.SIGTERM)
        finished = True
    assert finished and isinstance(info.value, Terminated) and info.value.exit_code == 143


def test_sigterm_as_interrupt_raises_where_ctrl_c_would() -> None:
    before = signal.getsignal(signal.SIGTERM)
    steps = []
    with pytest.raises(Terminated), sigterm_as_interrupt():
        steps.append("before")
        deliver(signal.SIGTERM)
        steps.append("unreachable")
    assert steps == ["before"]
    assert signal.getsignal(signal.SIGTERM) is before


def test_second_signal_stops_at_once() -> None:
    steps = []
    with pytest.raises(KeyboardInterrupt), interrupt_deferred():
        deliver(signal.SIGINT)
        steps.append("deferred")
        deliver(signal.SIGINT)
        steps.append("unreachable")
    assert steps == ["deferred"]


def test_no_signal_no_effect_and_handlers_restored() -> None:
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    with interrupt_deferred():
        assert signal.getsignal(signal.SIGINT) is not before[signal.SIGINT]
    assert {sig: signal.getsignal(sig) for sig in before} == before


def test_exception_in_block_propagates_and_restores() -> None:
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(ValueError, match="boom"), interrupt_deferred():
        deliver(signal.SIGINT)
        raise ValueError("boom")
    assert signal.getsignal(signal.SIGINT) is before


def test_outside_main_thread_is_a_no_op() -> None:
    outcome: list[object] = []

    def work() -> None:
        try:
            with interrupt_deferred():
                outcome.append("ran")
        except Exception as exc:  # pragma: no cover - reported through the assert
            outcome.append(exc)

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    assert outcome == ["ran"]
