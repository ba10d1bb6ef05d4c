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
