"""Statuses: one spelling of each status, in models.py.

No database needed: these read the enum and the shipped migration.
"""

from __future__ import annotations

import importlib.util
import json
import pathlib
import types

from flask_durable_jobs import STATUSES, models

MIGRATION = (
    pathlib.Path(models.__file__).parent / "migrations" / "versions" / "0001_initial.py"
)


def _migration() -> types.ModuleType:
    spec = importlib.util.spec_from_file_location("revision_0001", MIGRATION)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_statuses_are_the_strings_stored() -> None:
    assert [str(s) for s in models.Status] == [
        "pending", "running", "retrying", "succeeded", "dead", "cancelled"]
    assert tuple(models.Status) == STATUSES
    assert models.PENDING is models.Status.PENDING and models.PENDING == "pending"
    assert f"{models.Status.DEAD}" == "dead" and json.dumps(models.Status.DEAD) == '"dead"'
    assert {models.Status.RUNNING: 1}["running"] == 1  # keys meet values read back
    assert [str(s) for s in models.CallbackStatus] == ["pending", "delivered", "failed"]


def test_index_conditions_are_built_from_the_statuses() -> None:
    assert models.WAITING_SQL == "status IN ('pending', 'retrying')"
    assert models.RUNNING_SQL == "status = 'running'"
    assert models.ENDED_SQL == (
        "(status = 'succeeded' OR status = 'dead' OR status = 'cancelled')")
    assert models.CALLBACK_DUE_SQL == "callback_status = 'pending'"


def test_the_migration_writes_the_models_conditions() -> None:
    """The revision keeps its own copies (a revision never changes with later
    code); they must say what the models' partial indexes say."""
    revision = _migration()
    assert revision.WAITING == models.WAITING_SQL
    assert revision.RUNNING == models.RUNNING_SQL
    assert revision.ENDED == models.ENDED_SQL
    assert revision.CALLBACK_DUE == models.CALLBACK_DUE_SQL
