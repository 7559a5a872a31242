"""The drill tests' shared drill: one run serves the ``{report}`` test and the HTML tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from drill.run import SHORT, drill, python_command


@pytest.fixture(scope="session")
def drained_page(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """The drained App as a ``--command`` writing its report to ``{report}``, drilled once
    with ``--json --html``: the page's path and the verdict.
    """
    out = tmp_path_factory.mktemp("html") / "drill.html"
    command = python_command("tests/drill/serve.py", "{port}", "{report}")
    result = drill("--command", command, "--json", "--html", str(out), *SHORT)
    assert result.code == 0, result
    return out, result.verdict
