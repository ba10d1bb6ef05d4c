"""System tests: each starts the real server (`python -m service`) on a loopback port, as the README says, and
talks to it over HTTP. All of them carry the `system` marker: `pytest -m "not system"` runs the rest."""

from pathlib import Path

import pytest

HERE = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(item.path).parents:
            item.add_marker(pytest.mark.system)
