"""Failures reach the rule's log: ``eqpo.workflow.pipeline.logged`` writes the error into the log before it
gives stderr back, so a failed rule's log ends with the error (a traceback, the message of
SystemExit("..."), or the exit status), and every workflow script runs all its work inside it."""

import ast
import logging
import runpy
from pathlib import Path
from types import SimpleNamespace

import pytest

from eqpo.workflow.pipeline import logged

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted((ROOT / "workflow" / "scripts").glob("*.py"))


def _last_line(path: Path) -> str:
    return path.read_text().rstrip("\n").splitlines()[-1]


def test_an_exception_ends_the_log_with_its_traceback(tmp_path, capsys):
    log = tmp_path / "rule.log"
    with pytest.raises(KeyError):
        with logged(log):
            print("working")
            logging.getLogger("eqpo").info("step one")
            {}["missing key"]
    text = log.read_text()
    assert text.index("working") < text.index("step one") < text.index("Traceback (most recent call last)")
    assert _last_line(log) == "KeyError: 'missing key'"
    assert "Traceback" not in capsys.readouterr().err  # nothing escaped to the console meanwhile


def test_a_system_exit_with_a_message_ends_the_log_with_it(tmp_path):
    log = tmp_path / "rule.log"
    with pytest.raises(SystemExit):
        with logged(log):
            raise SystemExit("GPU training needs verl in this environment")
    assert _last_line(log) == "GPU training needs verl in this environment"


def test_a_system_exit_with_a_status_ends_the_log_with_it(tmp_path):
    log = tmp_path / "rule.log"
    with pytest.raises(SystemExit):
        with logged(log):
            print("instructions for the missing data")
            raise SystemExit(3)
    assert log.read_text() == "instructions for the missing data\nexit status 3\n"


def test_success_leaves_no_error_in_the_log(tmp_path):
    log = tmp_path / "rule.log"
    with logged(log):
        print("done")
    assert log.read_text() == "done\n"
    with pytest.raises(SystemExit):
        with logged(log):
            raise SystemExit(0)
    assert log.read_text() == ""


def _allowed_before_logged(node: ast.stmt) -> bool:
    """What may run outside logged(): the docstring, imports from this package (eqpo.*) or the
    standard library's pathlib, and naming parts of the snakemake object. Third-party imports
    (papermill, verl) can fail and belong inside."""
    if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
        return True
    if isinstance(node, ast.ImportFrom) and (
        node.module in ("pathlib", "__future__") or (node.module or "").split(".")[0] == "eqpo"
    ):
        return True
    if isinstance(node, ast.Assign) and isinstance(node.value, ast.Attribute):
        return isinstance(node.value.value, ast.Name) and node.value.value.id == "snakemake"
    return False


@pytest.mark.parametrize("script", SCRIPTS, ids=[s.name for s in SCRIPTS])
def test_every_workflow_script_does_its_work_inside_logged(script):
    body = ast.parse(script.read_text()).body
    withs = [i for i, node in enumerate(body) if isinstance(node, ast.With)]
    assert len(withs) == 1, f"{script.name}: expected one `with logged(snakemake.log[0]):` block"
    block = body[withs[0]]
    assert ast.unparse(block.items[0].context_expr) == "logged(snakemake.log[0])", script.name
    assert withs[0] == len(body) - 1, f"{script.name}: statements after the logged block run outside the log"
    outside = [ast.unparse(node) for node in body[: withs[0]] if not _allowed_before_logged(node)]
    assert not outside, f"{script.name}: {outside} can fail before the log is set up; move it inside logged()"


def test_a_failing_rule_script_ends_its_log_with_the_error(tmp_path):
    """workflow/scripts/prepare_dataset.py as Snakemake runs it, for a dataset whose files are missing."""
    log = tmp_path / "logs" / "prepare_dataset" / "CheXpert.log"
    fake = SimpleNamespace(
        log=[str(log)],
        wildcards=SimpleNamespace(dataset="CheXpert"),
        output=[str(tmp_path / "data" / "CheXpert" / "table.parquet")],
        params=SimpleNamespace(seed=0, split=[0.7, 0.15, 0.15], skip_unavailable=False, release=""),
    )
    with pytest.raises(SystemExit) as stop:
        runpy.run_path(str(ROOT / "workflow" / "scripts" / "prepare_dataset.py"), init_globals={"snakemake": fake})
    assert stop.value.code == 3
    text = log.read_text()
    assert "Dataset CheXpert is not available" in text and _last_line(log) == "exit status 3"


def test_a_crashing_rule_script_ends_its_log_with_the_traceback(tmp_path):
    """workflow/scripts/score.py on predictions that do not exist: the log ends with the exception."""
    log = tmp_path / "score.log"
    fake = SimpleNamespace(
        log=[str(log)],
        input=[str(tmp_path / "absent.parquet")],
        output=[str(tmp_path / "m.json")],
        params=SimpleNamespace(options={}),
        wildcards=SimpleNamespace(model="demo-linear", method="grpo", seed="0"),
    )
    with pytest.raises(FileNotFoundError):
        runpy.run_path(str(ROOT / "workflow" / "scripts" / "score.py"), init_globals={"snakemake": fake})
    assert "Traceback (most recent call last)" in log.read_text()
    assert _last_line(log).startswith("FileNotFoundError") and "absent.parquet" in _last_line(log)
