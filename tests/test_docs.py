"""The repository stands alone: nothing cites a specification outside it, and every citation of
docs/method.md names a section that exists there."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SPEC = REPO / "docs" / "method.md"
TEXT_SUFFIXES = {".py", ".smk", ".md", ".yaml", ".yml", ".rst", ".ipynb", ".toml", ".cff", ".txt", ""}
# Split so that this file does not match itself.
OUTSIDE = ("METHOD" + ".md", "../" + "shared", "shared/" + "docs")
CITATION = re.compile(r"docs/method\.md,? (?:§|Section )(\d+(?:\.\d+)?)(?:\s*-\s*(\d+(?:\.\d+)?))?")


def repository_files() -> list[Path]:
    """The repository's own text files: tracked or new, not what .gitignore keeps out (builds, eggs)."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.splitlines()
    files = [REPO / name for name in listed]
    return [p for p in files if p.is_file() and p.suffix in TEXT_SUFFIXES]


def spec_sections() -> set[str]:
    return set(re.findall(r"^#{2,3} §(\d+(?:\.\d+)?) ", SPEC.read_text(encoding="utf-8"), flags=re.M))


def test_nothing_cites_a_specification_outside_the_repository():
    offenders = [
        f"{p.relative_to(REPO)}: {needle}"
        for p in repository_files()
        for needle in OUTSIDE
        if needle in p.read_text(encoding="utf-8", errors="replace")
    ]
    assert offenders == []


def test_every_citation_of_the_method_names_a_section_that_exists():
    sections = spec_sections()
    assert {"1", "2", "3", "3.3", "3.6", "4", "4.1", "7"} <= sections
    cited = []
    for path in repository_files():
        for match in CITATION.finditer(path.read_text(encoding="utf-8", errors="replace")):
            cited += [(path.relative_to(REPO), s) for s in match.groups() if s]
    assert len(cited) >= 20  # the library, tests and rules cite it
    assert [c for c in cited if c[1] not in sections] == []


def test_license_and_citation_agree_with_the_package_metadata():
    import tomllib

    import yaml

    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert project["license"] == "Apache-2.0"
    license_text = (REPO / "LICENSE").read_text(encoding="utf-8")
    assert "Apache License" in license_text and "Version 2.0, January 2004" in license_text
    citation = yaml.safe_load((REPO / "CITATION.cff").read_text(encoding="utf-8"))
    assert citation["cff-version"] == "1.2.0"
    assert (citation["license"], str(citation["version"])) == (project["license"], project["version"])
    (paper,) = citation["references"]
    assert "arXiv:2510.19893" in [i["value"] for i in paper["identifiers"]]
    assert [a["family-names"] for a in paper["authors"]] == ["Dai", "Dai", "Cheong", "Liang"]
