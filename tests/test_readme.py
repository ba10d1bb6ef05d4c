"""The README stays true: every setting is documented, and the commands it shows exist."""

import re

from service.config import ENV_PREFIX, Settings
from tests.conftest import REPO

README = (REPO / "README.md").read_text()


def test_every_setting_is_in_the_readme_table() -> None:
    documented = set(re.findall(rf"`({ENV_PREFIX}[A-Z_]+)`", README))
    expected = {f"{ENV_PREFIX}{name.upper()}" for name in Settings.model_fields}
    assert expected <= documented, f"undocumented: {sorted(expected - documented)}"
    assert documented <= expected, f"documented but not settings: {sorted(documented - expected)}"


def test_quickstart_commands_are_make_targets() -> None:
    makefile = (REPO / "Makefile").read_text()
    for target in ("serve", "test", "train", "export", "evaluate"):
        assert re.search(rf"^{target}:", makefile, re.MULTILINE), target
        assert f"make {target}" in README, target
    assert (REPO / ".ci" / "run").read_text().strip().endswith("make test")


def test_the_code_map_names_every_module_and_only_files_that_exist() -> None:
    section = README.split("## Code map", 1)[1].split("\n## ", 1)[0]
    named = set(re.findall(r"`((?:service|training|tests)/[\w/]*(?:\.py|/))`", section))
    assert all((REPO / path).exists() for path in named), sorted(p for p in named if not (REPO / p).exists())
    files = [*(REPO / "service").glob("*.py"), *(REPO / "training").glob("*.py")]
    modules = {str(path.relative_to(REPO)) for path in files}
    entry_points = {"service/__init__.py", "service/__main__.py", "training/__init__.py", "training/__main__.py"}
    assert modules - entry_points <= named, f"not in the code map: {sorted(modules - entry_points - named)}"
