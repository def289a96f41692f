"""The per-rule conda environments of the CPU and data rules pin exact versions, and each pin lies in
the range pyproject.toml gives for the same package (the one the tests install)."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def pip_lines(env: str) -> list[str]:
    spec = yaml.safe_load((REPO / "envs" / env).read_text())
    return next(d["pip"] for d in spec["dependencies"] if isinstance(d, dict) and "pip" in d)


def ranges(*extras: str) -> dict[str, Requirement]:
    lines = list(PYPROJECT["dependencies"]) + [r for e in extras for r in PYPROJECT["optional-dependencies"][e]]
    return {canonicalize_name(r.name): r for r in map(Requirement, lines) if not r.name.startswith("eqpo")}


@pytest.mark.parametrize("env, extras", [("cpu.yaml", ("pipeline",)), ("data.yaml", ("data",))])
def test_every_pin_is_exact_and_within_pyproject(env, extras):
    allowed = ranges(*extras)
    for line in pip_lines(env):
        requirement = Requirement(line)
        specifiers = list(requirement.specifier)
        assert len(specifiers) == 1 and specifiers[0].operator == "==", f"{env}: {line!r} is not an exact pin"
        name = canonicalize_name(requirement.name)
        assert name in allowed, f"{env}: {requirement.name} is not a dependency in pyproject.toml {extras}"
        version = Version(specifiers[0].version)
        assert allowed[name].specifier.contains(version, prereleases=True), (
            f"{env}: {line} is outside pyproject.toml's {allowed[name]}"
        )
