"""A stand-in `conda` for dry runs of the SLURM profile, which deploys conda environments: even a dry
run asks conda about itself (`conda info --json`, `--version`, the channel priority). It answers those
three questions only, so a dry run plans without conda installed; anything else (building an
environment) fails loudly."""

from __future__ import annotations

import functools
import os
import tempfile
from pathlib import Path

FAKE_CONDA = """#!/bin/sh
case "$*" in
  "--version") echo "conda 24.11.3";;
  "info --json") echo '{"conda_version": "24.11.3", "platform": "linux-64", "conda_prefix": "/opt/conda"}';;
  "config --get channel_priority --json") echo '{"get": {"channel_priority": "strict"}}';;
  *) echo "fake conda cannot: $*" >&2; exit 1;;
esac
"""


@functools.cache
def fake_conda_dir() -> Path:
    """A folder holding the stand-in `conda` (made once per process)."""
    bin_dir = Path(tempfile.mkdtemp(prefix="fake-conda-"))
    (bin_dir / "conda").write_text(FAKE_CONDA)
    (bin_dir / "conda").chmod(0o755)
    return bin_dir


def env_with_fake_conda() -> dict[str, str]:
    """This process's environment with the stand-in `conda` first on PATH."""
    return {**os.environ, "PATH": f"{fake_conda_dir()}{os.pathsep}{os.environ.get('PATH', '')}"}
