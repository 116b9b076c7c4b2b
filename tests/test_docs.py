"""The reference docs cover every setting and command the code has."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import click

from flask_durable_jobs import config
from flask_durable_jobs.cli import jobs_cli

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


def documented_settings() -> dict[str, object]:
    text = (DOCS / "configuration.rst").read_text(encoding="utf-8")
    found = {}
    for match in re.finditer(
        r"^\.\. data:: (DURABLE_JOBS_\w+)\n(.*?)(?=^\.\. |^\S)", text, re.M | re.S
    ):
        default = re.search(r"Default: ``(.+?)``", match.group(2))
        assert default, f"{match.group(1)} has no 'Default: ``...``' line"
        found[match.group(1)] = ast.literal_eval(default.group(1))
    return found


def test_every_setting_is_documented_with_its_default() -> None:
    documented = documented_settings()
    expected = {config.PREFIX + key: value for key, value in config.DEFAULTS.items()}
    assert documented.keys() == expected.keys()
    for key, value in expected.items():
        assert documented[key] == value, f"{key}: docs say {documented[key]!r}, code {value!r}"


def test_every_command_and_option_is_documented() -> None:
    text = (DOCS / "cli.rst").read_text(encoding="utf-8")
    for name, command in jobs_cli.commands.items():
        assert f"``flask jobs {name}" in text, f"flask jobs {name} is not in docs/cli.rst"
        for param in command.params:
            if isinstance(param, click.Option):
                assert any(f".. option:: {opt}" in text for opt in param.opts), (
                    f"flask jobs {name} {param.opts[0]} is not in docs/cli.rst"
                )


def test_readme_opens_with_the_two_commands() -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```console\n(.*?)```", text, re.S)
    assert blocks[0].strip() == "$ ./scripts/run-example"
    assert blocks[1].strip() == "$ ./scripts/test"
    for script in ("run-example", "test"):
        assert (ROOT / "scripts" / script).exists()
