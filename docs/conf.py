"""Sphinx configuration: ``sphinx-build -W -b html docs docs/_build/html``."""

from __future__ import annotations

import re
import sys
import typing as t
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE / "_ext"))


def _version() -> str:
    # Read, don't import: the docs build needs no database driver.
    init = (ROOT / "flask_durable_jobs" / "__init__.py").read_text(encoding="utf-8")
    match = re.search(r"^__version__\s*=\s*['\"]([^'\"]+)['\"]", init, re.M)
    return match.group(1) if match else "unknown"


project = "flask-durable-jobs"
author = "flask-durable-jobs maintainers"
copyright = "2026, flask-durable-jobs maintainers"
release = _version()
version = ".".join(release.split(".")[:2])

extensions = ["myst_parser", "openapi_routes"]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]
# The benchmarks page is written separately; it may use any heading depth and
# link to files outside docs/ (bench/), which Sphinx can't resolve.
suppress_warnings = ["myst.header", "myst.xref_missing"]
default_role = "code"
primary_domain = "py"
pygments_style = "sphinx"


html_theme = "furo"
html_title = f"flask-durable-jobs {release}"
html_static_path: list[str] = []


def _without_benchmarks(app: t.Any, docname: str, source: list[str]) -> None:
    """Build without docs/benchmarks.md (written separately) when it's absent."""
    if (HERE / "benchmarks.md").exists():
        return
    text = source[0].replace(":doc:`benchmarks`", "``benchmarks.md`` (not in this build)")
    source[0] = text.replace("\n    benchmarks\n", "\n")


def setup(app: t.Any) -> None:
    app.connect("source-read", _without_benchmarks)
