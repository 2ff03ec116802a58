"""Fault injection for tests/test_faults.py and tests/test_resume.py: Python imports this at start-up when its folder
is on PYTHONPATH.

Snakemake runs a rule's script as ``python .snakemake/scripts/tmp<random>.<script file name>``. In such a process,
when the script file name is ``DIFFLENS_FAULT_SCRIPT``, the first ``DIFFLENS_FAULT_TIMES`` runs (counted in the file
``DIFFLENS_FAULT_COUNTER``) are killed with SIGKILL, as the kernel's out-of-memory killer or a batch system's limit
would; the runs after that go on untouched. Every other process (Snakemake itself, other rules) is left alone, so the
rules under test are the real ones, unchanged.

* When: before the script starts; or, with ``DIFFLENS_FAULT_AT_OPEN`` set, when the script opens a file whose path
  ends with that text for writing (an audit hook sees the open before it happens), so that the outputs it wrote
  before that one are on disk and that one is not.
* Whom: the job's own process; or, with ``DIFFLENS_FAULT_KILL=run``, its whole process group (Snakemake and every
  job, when the test started Snakemake in a session of its own: a crashed login node).
"""
import os
import signal
import sys

_script = os.environ.get("DIFFLENS_FAULT_SCRIPT")


def _kill() -> None:
    if os.environ.get("DIFFLENS_FAULT_KILL", "job") == "run":
        os.killpg(os.getpgrp(), signal.SIGKILL)
    os.kill(os.getpid(), signal.SIGKILL)


def _opens_for_writing(mode, flags) -> bool:
    """Whether an ``open`` audit event's mode (io.open) or flags (os.open, mode None) ask to write."""
    if isinstance(mode, str):
        return any(c in mode for c in "wax+")
    return bool(flags & (os.O_WRONLY | os.O_RDWR))


def _kill_at_open(event: str, args) -> None:
    if event != "open" or isinstance(args[0], int):
        return
    path = os.fsdecode(os.fspath(args[0]))
    if path.endswith(os.environ["DIFFLENS_FAULT_AT_OPEN"]) and _opens_for_writing(args[1], args[2]):
        _kill()


if _script and sys.argv and sys.argv[0].endswith(f".{_script}"):
    _counter = os.environ["DIFFLENS_FAULT_COUNTER"]
    try:
        with open(_counter) as _f:
            _runs = int(_f.read() or 0)
    except FileNotFoundError:
        _runs = 0
    with open(_counter, "w") as _f:
        _f.write(str(_runs + 1))
    if _runs < int(os.environ.get("DIFFLENS_FAULT_TIMES", "1")):
        if os.environ.get("DIFFLENS_FAULT_AT_OPEN"):
            sys.addaudithook(_kill_at_open)
        else:
            _kill()
