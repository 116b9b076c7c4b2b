"""Importable no-op job functions for peers that resolve jobs by dotted path (RQ)."""


def noop() -> None:
    return None
