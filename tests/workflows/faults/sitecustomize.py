"""Fault injection for tests/test_faults.py: Python imports this at start-up when its folder is on PYTHONPATH.

Snakemake runs a rule's script as ``python .snakemake/scripts/tmp<random>.<script file name>``. In such a process,
when the script file name is ``DIFFLENS_FAULT_SCRIPT``, the first ``DIFFLENS_FAULT_TIMES`` runs (counted in the file
``DIFFLENS_FAULT_COUNTER``) kill themselves with SIGKILL before the script starts, as the kernel's out-of-memory
killer or a batch system's limit would; the runs after that go on untouched. Every other process (Snakemake itself,
other rules) is left alone, so the rules under test are the real ones, unchanged.
"""
import os
import signal
import sys

_script = os.environ.get("DIFFLENS_FAULT_SCRIPT")
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
        os.kill(os.getpid(), signal.SIGKILL)
