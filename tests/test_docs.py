"""The reference docs cover every setting and command the code has."""

from __future__ import annotations

import ast
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import click
import pytest

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


# -- the shell blocks of README.md and example_app/README.md, run as pasted -----------

#: Commands the walkthrough test does not run: the test starts the example
#: itself (as ./scripts/run-example does), and installs, production servers
#: and the test suite are out of its reach.
NOT_RUN = ("./scripts/", "pip install", "gunicorn ", "flask --app example_app run",
           "export DATABASE_URL=", "flask --app example_app init-db",
           "flask --app example_app jobs upgrade")


def shell_commands(path: Path) -> list[str]:
    """The ``$ `` commands of a file's console blocks, in order, continuation
    lines joined."""
    commands: list[str] = []
    text = path.read_text(encoding="utf-8")
    for block in re.findall(r"```console\n(.*?)```", text, re.S):
        current: list[str] = []
        for line in block.splitlines():
            if line.startswith("$ "):
                current = [line[2:]]
            elif current:
                current.append(line)
            else:
                continue  # output shown in the docs
            if not current[-1].endswith("\\"):
                commands.append("\n".join(current))
                current = []
    return commands


@pytest.mark.slow
@pytest.mark.parametrize("doc", ["README.md", "example_app/README.md"])
def test_the_walkthrough_commands_work_when_pasted(doc: str, tmp_path: Path) -> None:
    """Each file's commands, in order, against a freshly started example (a
    fresh database, the token ./scripts/run-example sets), from a second
    terminal that knows nothing of the server's environment."""
    requests = pytest.importorskip("requests")
    commands = [c for c in shell_commands(ROOT / doc) if not c.startswith(NOT_RUN)]
    assert commands, f"no commands found in {doc}"
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    bin_dir = str(Path(sys.executable).parent)
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith(("FLASK_", "ADMIN_TOKEN", "DATABASE_URL", "VIRTUAL_ENV"))}
    database = f"sqlite:///{tmp_path / 'example.db'}"
    server_env = {**clean, "PYTHONPATH": str(ROOT), "ADMIN_TOKEN": "dev-token",
                  "DATABASE_URL": database, "FLASK_DURABLE_JOBS_POLL_INTERVAL": "0.2"}
    log = open(tmp_path / "server.log", "wb")  # noqa: SIM115 - closed below
    server = subprocess.Popen(
        [str(Path(bin_dir) / "flask"), "--app", "example_app", "run", "--port", str(port),
         "--no-reload"], cwd=ROOT, env=server_env, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                requests.get(f"http://127.0.0.1:{port}/", timeout=1)
                break
            except requests.ConnectionError:
                assert server.poll() is None, (tmp_path / "server.log").read_text()
                assert time.monotonic() < deadline, "the example did not start"
                time.sleep(0.2)
        # The second terminal: the project's .venv stands in for the one the
        # docs activate; the database is the server's, the token unset.
        terminal = {**clean, "PATH": bin_dir + os.pathsep + clean.get("PATH", ""),
                    "DATABASE_URL": database, "PYTHONPATH": str(ROOT)}
        script = ["set -euo pipefail", "deactivate() { :; }"]
        for command in commands:
            if command.startswith(". .venv/bin/activate"):
                continue  # stands in: PATH above
            command = command.replace("localhost:5000", f"localhost:{port}")
            # what the reader sees: an HTTP error fails the step
            command = re.sub(r"^curl ", "curl -sS --fail-with-body ", command)
            if "jobs retry" in command:  # a human pastes it after the job went dead
                script.append(f"ok=0; for _ in $(seq 50); do if {command}; then ok=1; break;"
                              " fi; sleep 0.2; done; [ $ok = 1 ]")
            else:
                script.append(command)
            script.append("echo")
        done = subprocess.run(["bash", "-c", "\n".join(script)], cwd=ROOT, env=terminal,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, f"{doc}:\n{done.stdout}\n{done.stderr}"
        if doc.startswith("example_app"):
            assert "job 6 is pending" in done.stdout, done.stdout
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()
