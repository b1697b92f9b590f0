"""Leave the process as soon as its work is done.

Interpreter finalisation tears torch, OpenVINO, numba and FFmpeg down one object and one
library at a time: measured on the 2-core AVX2 guest, 0.7 s after `orstream run` had
closed its recording and sockets, and 1.1 s in the VLM's worker process, all of it between
Ctrl-C and the prompt (or a supervisor's restart). `exit_now` does what an exit owes the
outside world, then hands the rest to the kernel.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import sys
import threading
from typing import NoReturn


def exit_now(code: int) -> NoReturn:
    """Join the non-daemon threads, run the atexit handlers (weakref finalizers and
    tempfile cleanups among them), flush stdout and stderr, then `os._exit(code)`."""
    main = threading.main_thread()
    for thread in threading.enumerate():
        if thread is not main and not thread.daemon:
            thread.join()
    # No public way to run them; this is what the interpreter itself calls at exit.
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):  # a closed pipe (| head) must not stop the exit
            stream.flush()
    os._exit(code)
