"""Every shell command the README shows works as written: the ones a user runs here are run (or, for a
Snakemake workflow, planned with a dry run), the cluster ones are planned against the SLURM profile
with a stand-in conda, the install commands name extras and files that exist, and the tools of other
projects that the README names are installed by the environment that needs them.

A command is a line of a ```bash block, or an inline code span that starts with a program name
(snakemake, make, python, pip, srun, wandb, huggingface-cli). A command no check knows fails the test:
a new kind of command needs a check here."""

from __future__ import annotations

import importlib.util
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from fake_conda import env_with_fake_conda

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text(encoding="utf-8")
PROGRAMS = ("snakemake", "make", "python", "pip", "srun", "wandb", "huggingface-cli")
START = re.compile(rf"^(?:{'|'.join(re.escape(p) for p in PROGRAMS)})\s")  # a bare `srun` is a name
# Placeholders of the README's commands and what a check puts in their place.
PLACEHOLDERS = {"<experiment>": "paper"}
# Programs of other projects that the README tells users to run, and the package of the GPU environment
# (envs/gpu.lock.txt) that installs each.
EXTERNAL = {"wandb": "wandb", "huggingface-cli": "huggingface-hub"}


def fenced(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)


def readme_commands() -> list[str]:
    """Every command of the README, in order, each once."""
    found = []
    for block in fenced("bash"):
        for line in block.splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            if line and not line.startswith("#"):
                found.append(line)
    found += [span for span in re.findall(r"`([^`\n]+)`", README) if START.match(span)]
    return list(dict.fromkeys(found))


def overlays_in_readme() -> dict[str, str]:
    """The overlays the README writes out (a ```yaml block whose first line is `# <path>`)."""
    out = {}
    for block in fenced("yaml"):
        first, _, body = block.partition("\n")
        if first.startswith("# config/"):
            out[first[2:].strip()] = body
    return out


def run(argv: list[str], env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env)


def check_snakemake(args: list[str], tmp_path: Path) -> None:
    written = overlays_in_readme()
    for i, arg in enumerate(args):
        if arg in written:  # an overlay the README tells the user to write: write it
            path = tmp_path / Path(arg).name
            path.write_text(written[arg])
            args[i] = str(path)
        elif arg.startswith("config/") and not (REPO / arg).exists():
            raise AssertionError(f"the README's command names {arg}, which neither exists nor is written out")
    if "--conda-create-envs-only" in args:  # would build the environments: plan them instead
        args = [a for a in args if a != "--conda-create-envs-only"]
    if "--lint" in args:
        proc = run([sys.executable, "-m", "snakemake", *args])
    else:
        proc = run([sys.executable, "-m", "snakemake", *args, "--dry-run"], env=env_with_fake_conda())
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-3000:]
    for target in (a for a in args if a.startswith("results/")):
        assert target in output, f"the dry run does not plan {target}:\n{output[-3000:]}"


def check_make(args: list[str], tmp_path: Path) -> None:
    proc = run(["make", "-n", *args])
    assert proc.returncode == 0, proc.stdout + proc.stderr


def check_python(args: list[str], tmp_path: Path) -> None:
    assert args[0] == "-m", f"python {' '.join(args)}: the README runs modules with -m"
    module, rest = args[1], args[2:]
    if module.startswith("verl."):  # verl's own entry point, named in the text
        assert importlib.util.find_spec(module) is not None, module
        return
    synopsis = any("[" in a or "..." in a for a in rest)
    proc = run([sys.executable, "-m", module, *(["--help"] if synopsis else rest)])
    assert proc.returncode == 0, proc.stdout + proc.stderr


def check_srun(args: list[str], tmp_path: Path) -> None:
    at = args.index("python")
    check_python(args[at + 1 :] + ["--help"], tmp_path)


def check_pip(args: list[str], tmp_path: Path) -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    if args[:2] == ["install", "-e"]:
        extras = re.fullmatch(r"\.\[([\w,]+)\]", args[2]).group(1).split(",")
        missing = set(extras) - set(pyproject["project"]["optional-dependencies"])
        assert not missing, f"pip install -e names extras pyproject does not define: {missing}"
    elif args[:2] == ["install", "-r"]:
        lines = [line.split("#")[0].strip() for line in (REPO / args[2]).read_text().splitlines()]
        pins = [line for line in lines if line and not line.startswith("-")]
        assert pins and all(re.fullmatch(r"[A-Za-z0-9_.\-\[\]]+==[\w.+!]+( ;.*)?", p) for p in pins), args[2]
    else:
        raise AssertionError(f"no check knows pip {' '.join(args)}")


def check_external(program: str) -> None:
    lock = (REPO / "envs" / "gpu.lock.txt").read_text()
    package = EXTERNAL[program]
    assert re.search(rf"^{re.escape(package)}==", lock, flags=re.M), f"{program} comes from {package}: not locked"


CHECKS = {
    "snakemake": check_snakemake,
    "make": check_make,
    "python": check_python,
    "srun": check_srun,
    "pip": check_pip,
}


def test_the_readme_shows_the_two_commands_first():
    assert fenced("bash")[0].split()[:1] == ["make"]
    assert [line.split("#")[0].strip() for line in fenced("bash")[0].strip().splitlines()] == ["make demo", "make test"]


def test_the_checks_see_the_commands():
    # the extraction is what the checks below rely on: a few commands known to be in the README
    commands = readme_commands()
    assert "make demo" in commands and "make test" in commands
    assert any(c.startswith("snakemake --profile slurm") for c in commands)
    assert any(c.startswith("snakemake --cores 2 results/") for c in commands)


@pytest.mark.slow
@pytest.mark.parametrize("command", readme_commands())
def test_every_readme_command_works_as_written(command, tmp_path):
    for placeholder, value in PLACEHOLDERS.items():
        command = command.replace(placeholder, value)
    program, *args = shlex.split(command)
    if program in EXTERNAL:
        check_external(program)
        return
    assert program in CHECKS, f"no check knows this README command: {command}"
    CHECKS[program](args, tmp_path)


def test_a_command_with_the_target_after_the_configfile_is_caught(tmp_path):
    # the mistake the README once made: Snakemake reads a target after --configfile as a config file
    with pytest.raises(AssertionError):
        check_snakemake(
            ["--cores", "2", "--configfile", "config/demo.yaml", "results/demo/demo-mlp/eqpo/seed0/metrics.json"],
            tmp_path,
        )


def test_the_overlays_the_readme_writes_are_valid_yaml():
    for path, body in overlays_in_readme().items():
        assert isinstance(yaml.safe_load(body), dict), path


def test_the_readme_python_runs_as_written(tmp_path):
    """The library example ("Use EQPO in your own code") runs as shown, in a fresh interpreter."""
    blocks = fenced("python")
    assert blocks, "the README shows no Python example"
    for block in blocks:
        proc = subprocess.run([sys.executable, "-c", block], cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
