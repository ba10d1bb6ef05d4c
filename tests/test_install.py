"""The installs pyproject.toml offers: a serving install (the `cpu` extra, which `make serve` installs, or `gpu`)
brings every module the command-line client imports, so that `python -m service.client` works beside the server."""

import ast
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.conftest import REPO

OWN_PACKAGES = {"service", "training"}


def installed_by(extra: str) -> set[str]:
    """The distributions (normalised names) that installing the project with `extra` asks for directly, through
    the extras of the project itself that it names (`image-classifier-service[client]`)."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    own, extras = canonicalize_name(project["name"]), project["optional-dependencies"]
    names, done, pending = set(), {extra}, [*project["dependencies"], *extras[extra]]
    while pending:
        requirement = Requirement(pending.pop())
        if canonicalize_name(requirement.name) != own:
            names.add(canonicalize_name(requirement.name))
            continue
        for more in requirement.extras - done:
            done.add(more)
            pending += extras[more]
    return names


def third_party_imports(module: Path) -> set[str]:
    """The top-level names of what `module` imports, but for the standard library and this project's packages."""
    tree = ast.parse(module.read_text())
    names = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    names |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.level == 0}
    tops = {name.partition(".")[0] for name in names if name}
    return tops - set(sys.stdlib_module_names) - OWN_PACKAGES


@pytest.mark.parametrize("extra", ["cpu", "gpu"])
def test_a_serving_install_brings_what_the_client_imports(extra: str) -> None:
    modules = third_party_imports(REPO / "service" / "client.py")
    assert {"httpx2", "tqdm"} <= modules  # the parsing found them
    distributions = packages_distributions()  # module name -> the distributions installed here that provide it
    missing = {
        module
        for module in modules
        if not {canonicalize_name(name) for name in distributions.get(module, [])} & installed_by(extra)
    }
    assert not missing, f"service/client.py imports {sorted(missing)}, which `pip install '.[{extra}]'` does not bring"
