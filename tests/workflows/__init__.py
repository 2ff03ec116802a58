"""Helpers of the workflow-level tests (tests/test_faults.py, tests/test_slurm.py): run the real workflow as a
subprocess from the repository root with a config file in a temp dir, and compare two runs' outputs."""
