"""Statuses and the SQL files: one spelling of each status, in models.py.

No database needed: these read the enum, the shipped SQL files and the
shipped migration's text.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import pathlib
import re
import types

import pytest

from flask_durable_jobs import STATUSES, models, sql

MIGRATION = (
    pathlib.Path(models.__file__).parent / "migrations" / "versions" / "0001_initial.py"
)


def _migration(path: pathlib.Path = MIGRATION) -> types.ModuleType:
    """A shipped revision's module, loaded from its file."""
    spec = importlib.util.spec_from_file_location(f"revision_{path.stem}", path)
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


def test_the_migration_creates_the_trigger_of_the_sql_file() -> None:
    """``flask jobs upgrade`` and ``db.create_all()`` make the same trigger."""
    executed = {
        " ".join(node.args[0].value.split())
        for revision in sorted(MIGRATION.parent.glob("0*.py"))
        for node in ast.walk(ast.parse(revision.read_text()))
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
        and node.func.attr == "execute" and isinstance(node.args[0], ast.Constant)
        and "notify" in node.args[0].value
    }
    ddl = {
        " ".join(statement.split())
        for name, statement in sql.load("postgresql").items()
        if name.startswith(("after_create.notify", "before_drop.notify"))
    }
    assert len(ddl) == 3
    assert ddl == executed


def test_revisions_0006_and_0007_make_the_counts_and_payload_index_of_the_sql_file() -> None:
    """``flask jobs upgrade`` and ``db.create_all()`` make the same counts
    table, count triggers and payload indexes (PostgreSQL): each statement
    of the SQL file is the last one of the revisions that makes its object."""
    made = {
        name: " ".join(statement.format_map(models.SQL_NAMES).split())
        for name, statement in sql.load("postgresql").items()
        if name.startswith(("after_create.count", "after_create.payload"))
    }
    assert len(made) == 9
    counted = _migration(MIGRATION.parent / "0006_counts.py")
    assert counted.ENDED == models.ENDED_SQL
    assert counted.WAITING == models.WAITING_SQL
    kept = _migration(MIGRATION.parent / "0007_kept_counts.py")
    assert kept.ENDED == models.ENDED_SQL
    remade = {" ".join(statement.split()) for statement in kept.UPGRADE}
    first = {" ".join(statement.split()) for statement in counted.UPGRADE}
    upgraded = remade | first
    assert {name for name, statement in made.items() if statement not in upgraded} == set()
    # 0007 redefines what counts: the function and the insert trigger
    assert made["after_create.count_function"] in remade
    assert made["after_create.count_insert"] in remade
    # and its downgrade puts back 0006's own statements, under the same lock
    restored = [" ".join(statement.split()) for statement in kept.DOWNGRADE]
    assert restored[0] == " ".join(kept.UPGRADE[0].split())
    assert [s for s in restored[1:] if s not in first] == []


@pytest.mark.parametrize("dialect", sql.DIALECTS)
def test_sql_files_spell_no_status(dialect: str) -> None:
    """Every status in the SQL files is a placeholder filled in from the enum,
    and every placeholder is known."""
    for name, statement in sql.load(dialect).items():
        assert not re.search(r"status\s*(=|<>|IN)\s*\(?\s*'", statement, re.IGNORECASE), name
        assert not re.search(r"THEN\s+'(pending|running|retrying|succeeded|dead|cancelled)'",
                             statement), name
        for placeholder in re.findall(r"\{(\w+)\}", statement):
            assert placeholder in models.SQL_NAMES, (name, placeholder)
        statement.format_map(models.SQL_NAMES)


#: Wake-ups and the server's clock exist on PostgreSQL only (SQLite is one host;
#: jobs.wait() polls there).
PG_ONLY = ("listen", "server_clock", "listen_ended", "notify_ended", "vacuum_state",
           "fold_counts")


def test_both_databases_have_the_same_statements() -> None:
    """One adapter per database, each with the whole set (DDL aside)."""
    def names(dialect: str) -> set[str]:
        return {n for n in sql.load(dialect) if "." not in n and n not in PG_ONLY}

    assert names("postgresql") == names("sqlite")


def test_parse_refuses_a_name_twice() -> None:
    with pytest.raises(ValueError, match="'claim'"):
        sql.parse("-- name: claim\nSELECT 1\n-- name: claim\nSELECT 2\n")
    assert sql.parse("-- about\n-- name: a\n-- why\nSELECT 1;\n\n-- name: b\nSELECT 2") == {
        "a": "SELECT 1", "b": "SELECT 2"}
