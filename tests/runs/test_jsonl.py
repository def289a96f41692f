"""JSON-lines run logs: a line cut off by a kill, resume truncation, and errors that name the line."""

from __future__ import annotations

import json

import pytest

from eqpo.runs import jsonl

CUT_OFF = '{"step": 3, "reward_m'  # what a SIGKILL mid-write leaves


def write(path, *lines):
    path.write_text("".join(line + "\n" for line in lines))


def test_a_cut_off_last_line_is_dropped_while_a_log_is_written_and_an_error_in_a_finished_file(tmp_path):
    log = tmp_path / "steps.jsonl"
    write(log, '{"step": 1, "x": 1.5}', "", '{"step": 2, "x": NaN}', CUT_OFF)
    records = jsonl.read(log, complete=False)
    assert [r["step"] for r in records] == [1, 2] and records[0]["x"] == 1.5
    with pytest.raises(ValueError, match=r"steps\.jsonl, line 3: not valid JSON"):
        jsonl.read(log, complete=True)
    write(log, '{"step": 1}', CUT_OFF, '{"step": 2}')  # broken in the middle: never silently dropped
    with pytest.raises(ValueError, match=r"line 2: not valid JSON"):
        jsonl.read(log, complete=False)


def test_truncate_after_keeps_the_covered_steps_verbatim_and_drops_a_cut_off_line(tmp_path):
    log = tmp_path / "dynamics.jsonl"
    lines = ['{"step": 0, "F1":  0.5}', '{"step": 10, "F1": 0.6}', '{"step": 20, "F1": 0.7}']
    write(log, *lines, CUT_OFF)
    assert jsonl.truncate_after(log, 10) == 2
    assert log.read_text() == lines[0] + "\n" + lines[1] + "\n"  # original text, not re-serialised
    assert jsonl.truncate_after(log, 10) == 0 and jsonl.truncate_after(tmp_path / "absent.jsonl", 5) == 0
    assert not list(tmp_path.glob("*.tmp"))


def test_a_training_log_resumes_past_a_cut_off_line(tmp_path):
    """jsonl.Log, the work-folder log of the CPU and trl trainers."""
    log = jsonl.Log(tmp_path / "steps.jsonl")
    log.append({"step": 1, "reward_mean": 0.25})
    log.append({"step": 2, "reward_mean": 0.5})
    with log.path.open("a") as handle:
        handle.write(CUT_OFF)  # killed while writing step 3
    log.truncate_after(2)  # the checkpoint covers step 2: step 3 runs again
    log.append({"step": 3, "reward_mean": 0.75})
    assert [json.loads(line)["step"] for line in log.path.read_text().splitlines()] == [1, 2, 3]
    assert [r["reward_mean"] for r in log.records()] == [0.25, 0.5, 0.75]
