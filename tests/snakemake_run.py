"""Running this repository's workflow from the tests: `python -m snakemake` on its Snakefile in a
working directory of the test's own (results, logs and data land there, not in the checkout)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_snakemake(
    workdir: Path, *args: str, configs: Sequence[Path | str], check: bool = True, timeout: float | None = None
) -> subprocess.CompletedProcess:
    """``snakemake <args> --snakefile <repo>/Snakefile --directory <workdir> --configfile <configs>``.

    Targets and flags go in ``args``, before ``--configfile`` (which takes every word after it). With
    ``check``, a non-zero exit raises AssertionError with the ends of Snakemake's output and of every
    rule log written under ``workdir/logs``."""
    cmd = [sys.executable, "-m", "snakemake", *args, "--snakefile", str(REPO / "Snakefile"),
           "--directory", str(workdir), "--configfile", *map(str, configs)]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        logs = "\n".join(f"--- {p}\n{p.read_text()[-3000:]}" for p in sorted(Path(workdir).glob("logs/**/*.log")))
        output = f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
        raise AssertionError(f"snakemake failed ({result.returncode}):\n{output}\n{logs[-12000:]}")
    return result
