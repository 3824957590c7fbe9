"""Stop signals: the first SIGTERM asks for a clean stop, a second one exits at once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from plumbing.signals import EXIT_SECOND_SIGNAL, StopSignals

ROOT = Path(__file__).resolve().parents[2]


def test_first_sigterm_sets_the_event() -> None:
    old = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    try:
        s = StopSignals().install()
        os.kill(os.getpid(), signal.SIGTERM)
        assert s.event.wait(5) and s.received == 1
    finally:
        signal.signal(signal.SIGTERM, old[0])
        signal.signal(signal.SIGINT, old[1])


def test_second_signal_exits_with_its_own_status() -> None:
    prog = textwrap.dedent(
        """
        import os, signal, time
        from plumbing.signals import StopSignals
        s = StopSignals().install()
        os.kill(os.getpid(), signal.SIGTERM)
        assert s.event.wait(5)
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(5)
        """
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    res = subprocess.run([sys.executable, "-c", prog], env=env, timeout=30, check=False)
    assert res.returncode == EXIT_SECOND_SIGNAL
