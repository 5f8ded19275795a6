"""SIGTERM treated like Ctrl-C, and both deferred while a checkpoint is being saved.

Batch schedulers stop a job with SIGTERM (and SIGKILL a while later); by default Python
dies of it at once, without a word. Inside :func:`sigterm_as_interrupt` it raises
:class:`Terminated` instead, a ``KeyboardInterrupt``, so whatever handles Ctrl-C (finished
epochs are saved, a resume hint is printed) handles it too.

An atomic save already guarantees that an interrupt never leaves a damaged checkpoint,
but an interrupt that lands during the save throws away the epoch being saved. Deferring
the signal for the few seconds the save takes means "stop" keeps all finished work.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Iterator
from types import FrameType

_NOTICE = "finishing the checkpoint, then stopping (send the signal again to stop now)"
_SIGTERM_EXIT_CODE = 128 + signal.SIGTERM


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived: handled like Ctrl-C; a command ends with :attr:`exit_code` (143)."""

    exit_code = _SIGTERM_EXIT_CODE


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Inside the block, SIGTERM raises :class:`Terminated` in the main thread (where
    Ctrl-C raises ``KeyboardInterrupt``); the previous handler is restored after. A no-op
    outside the main thread, where signal handlers cannot be set."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminate(signum: int, frame: FrameType | None) -> None:
        raise Terminated

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


@contextlib.contextmanager
def interrupt_deferred() -> Iterator[None]:
    """Run the block to completion even if SIGINT or SIGTERM arrives, then stop.

    The first signal is recorded and a one-line notice goes to stderr; when the block
    ends, SIGINT becomes ``KeyboardInterrupt`` and SIGTERM :class:`Terminated` (a
    ``KeyboardInterrupt`` too, exit code 143), as outside the block, only later. A second
    signal stops at once, so a hung block can still be interrupted (an atomic save stays
    safe: the previous file is kept). Signal handlers can only be set from the main
    thread, so elsewhere this is a no-op. If the block itself raises, that exception wins.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    received: list[int] = []

    def defer(signum: int, frame: FrameType | None) -> None:
        if received:
            _raise_for(signum)
        received.append(signum)
        with contextlib.suppress(OSError, RuntimeError, ValueError):
            print(_NOTICE, file=sys.stderr, flush=True)

    watched = (signal.SIGINT, signal.SIGTERM)
    previous = {sig: signal.signal(sig, defer) for sig in watched}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)
    if received:
        _raise_for(received[0])


def _raise_for(signum: int) -> None:
    if signum == signal.SIGTERM:
        raise Terminated
    raise KeyboardInterrupt
