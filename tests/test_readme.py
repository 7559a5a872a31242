"""The README's server example, pasted as it stands, runs in an App."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import quiesce

README = Path(__file__).resolve().parent.parent / "README.md"


def example(marker: str) -> str:
    """The README's Python block that contains ``marker``."""
    blocks: list[str] = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)
    (found,) = [block for block in blocks if marker in block]
    return found


async def test_the_readme_base_server_example_serves_and_stops_clean() -> None:
    scope: dict[str, Any] = {}
    exec(example("class Ticker(quiesce.BaseServer)"), scope)
    ticker = scope["Ticker"]()
    app = quiesce.App(name="readme", servers=[ticker])

    @app.after_start
    def ready() -> None:
        app.stop()

    report = await app.serve()
    assert report.exit_code == quiesce.ExitCode.OK, report.to_text()
    assert ticker.lifecycle is app.lifecycle
    assert report.step("stop_servers").waited_for == ["server ticker"]
