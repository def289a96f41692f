"""JSON-lines files that training runs append to and cut back on resume (``steps.jsonl``,
``dynamics.jsonl``, the cluster log, verl's file log).

A process killed mid-write can leave a cut-off last line. Readers of a log that is still being
written (``complete=False``) drop it; readers of a finished run file (``complete=True``) treat it as
the error it is there. A broken line before the last is always an error naming the file and line.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any


def read(path: str | Path, complete: bool = True) -> list[dict]:
    """The records of ``path`` (blank lines skipped); ``complete=False`` drops a cut-off last line."""
    lines = [line for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    records = []
    for number, line in enumerate(lines, 1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as err:
            if number == len(lines) and not complete:
                break
            raise ValueError(f"{path}, line {number}: not valid JSON ({err})") from None
    return records


def append(path: str | Path, rows: Iterable[Mapping[str, Any]], default: Callable[[Any], Any] | None = None) -> None:
    """Append rows, one JSON object per line (parent folders created)."""
    rows = list(rows)
    if not rows:
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as handle:
        handle.writelines(json.dumps(row, default=default) + "\n" for row in rows)


class Log:
    """A training run's append-only log in a work folder: records of the steps run so far, cut back to
    the steps a checkpoint covers on resume (a line cut off by a kill is dropped then)."""

    def __init__(self, path: str | Path, default: Callable[[Any], Any] | None = None):
        self.path, self.default = Path(path), default

    def append(self, *records: Mapping[str, Any]) -> None:
        append(self.path, (dict(r) for r in records), default=self.default)

    def records(self) -> list[dict]:
        return read(self.path, complete=False) if self.path.exists() else []

    def truncate_after(self, step: int) -> int:
        return truncate_after(self.path, step)

    def reset(self) -> None:
        self.path.unlink(missing_ok=True)


def truncate_after(path: str | Path, step: int) -> int:
    """Keep the records with ``step`` <= step (the steps a checkpoint covers; the others run again
    after a resume) and drop a cut-off last line; returns how many lines went. Rewritten atomically."""
    path = Path(path)
    if not path.exists():
        return 0
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    records = read(path, complete=False)  # the lines before a cut-off last one, in order
    keep = [line for line, record in zip(lines, records, strict=False) if record.get("step", 0) <= step]
    if len(keep) != len(lines):
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(line + "\n" for line in keep), encoding="utf-8")
        os.replace(tmp, path)
    return len(lines) - len(keep)
