"""``gunicorn`` for a process whose wall clock libfaketime moves.

``python -m tests.procs.skewed_gunicorn [gunicorn arguments]``, run with
``LD_PRELOAD=.../libfaketime.so.1 FAKETIME=+5m FAKETIME_DONT_FAKE_MONOTONIC=1``.

The monotonic clock must stay real: with it faked, libfaketime 0.9.10 (Debian
12) makes timed lock waits hang (wolfcw/libfaketime#390). Left real, the same
version breaks ``clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME)``
(wolfcw/libfaketime#426), which is how Python 3.11 sleeps: ``time.sleep``
raises ``OSError: [Errno 22]``. So here ``time.sleep`` waits on an Event,
whose timed wait libfaketime leaves alone, before gunicorn is imported.
Give gunicorn ``--timeout 0``: it compares the real times at which workers
touch their files with the faked wall clock, and would kill every worker.
"""

from __future__ import annotations

import threading
import time


def _sleep(seconds: float) -> None:
    if seconds < 0:
        raise ValueError("sleep length must be non-negative")
    threading.Event().wait(seconds)


time.sleep = _sleep

if __name__ == "__main__":
    from gunicorn.app.wsgiapp import run

    run()
