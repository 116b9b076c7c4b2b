"""Helper programs for the real-process tests in ``tests/test_processes.py``."""
