"""`snakemake --profile slurm` (the profile in ./slurm/) plans the paper run on a machine without
SLURM: every training job of 7 methods x 3 base models, with its GPUs and partition."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from fake_conda import env_with_fake_conda

REPO = Path(__file__).resolve().parents[3]
PAPER = yaml.safe_load((REPO / "config.yaml").read_text())
PROFILE = yaml.safe_load((REPO / "slurm" / "config.yaml").read_text())
RULES = "".join((REPO / "workflow" / "rules" / f).read_text() for f in ("train.smk", "evaluate.smk"))


def dry_run(*extra: str) -> str:
    """`snakemake --profile slurm -n` from the repository root; returns its output (asserts exit 0)."""
    env = env_with_fake_conda()
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "--profile", "slurm", "-n", *extra],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-4000:]
    return output


def jobs(output: str, rule: str) -> list[dict]:
    """The planned jobs of ``rule``: their wildcards and resources, parsed from the dry-run listing."""
    found = []
    for block in re.split(r"\n(?=\[[^\]]+\]\nrule |rule )", output):
        if not block.lstrip().startswith(f"rule {rule}:") and f"\nrule {rule}:" not in block:
            continue
        fields = dict(re.findall(r"^\s{4}(\w+): (.*)$", block, flags=re.M))
        parse = lambda text: dict(item.split("=", 1) for item in text.split(", ") if "=" in item)  # noqa: E731
        found.append({"wildcards": parse(fields.get("wildcards", "")), "resources": parse(fields.get("resources", ""))})
    return found


@pytest.fixture(scope="module")
def paper_plan() -> str:
    return dry_run()


def test_profile_is_found_at_the_repository_root(paper_plan):
    assert "Using profile slurm" in paper_plan


def test_every_training_run_is_planned(paper_plan):
    planned = jobs(paper_plan, "train_verl")
    runs = {(j["wildcards"]["model"], j["wildcards"]["method"], int(j["wildcards"]["seed"])) for j in planned}
    expected = {(m, me, s) for m in PAPER["base_models"] for me in PAPER["methods"] for s in PAPER["seeds"]}
    assert len(expected) == 24 and runs == expected and len(planned) == 24  # 8 methods x 3 base models
    assert re.search(r"^train_verl\s+24$", paper_plan, flags=re.M)


def test_training_jobs_ask_for_the_gpus_of_the_config_on_the_gpu_partition(paper_plan):
    account = PROFILE["default-resources"]["slurm_account"]
    for job in jobs(paper_plan, "train_verl"):
        res = job["resources"]
        assert res["gpu"] == str(PAPER["train"]["gpus"]) == "4"
        assert res["nodes"] == "1"  # without --nodes SLURM may split the GPUs over two nodes
        assert res["slurm_partition"] == "gpu" and res["slurm_account"] == account
        assert (int(res["mem_mb"]), int(res["runtime"])) == (
            PAPER["gpu_jobs"]["train_verl"]["mem_mb"],
            PAPER["gpu_jobs"]["train_verl"]["runtime"],
        )


def test_evaluation_gets_one_gpu_and_cpu_jobs_none(paper_plan):
    predict = jobs(paper_plan, "predict_vllm")
    assert len(predict) == 24
    assert all(j["resources"]["gpu"] == "1" and j["resources"]["slurm_partition"] == "gpu" for j in predict)
    for rule in ("score", "export_verl", "prepare_dataset"):
        planned = jobs(paper_plan, rule)
        assert planned and all("gpu" not in j["resources"] for j in planned)
        assert all(j["resources"]["slurm_partition"] == "cpu" for j in planned)


def test_the_gpu_count_follows_the_config(tmp_path):
    overlay = tmp_path / "gpus.yaml"
    overlay.write_text("train:\n  gpus: 8\n")
    planned = jobs(dry_run("--configfile", str(overlay)), "train_verl")
    assert len(planned) == 24 and {j["resources"]["gpu"] for j in planned} == {"8"}


def test_the_plugin_submits_those_gpus(paper_plan):
    """The resources of a planned training job, through the SLURM plugin's own sbatch flag builder."""
    from snakemake_executor_plugin_slurm.utils import set_gres_string

    class Resources(dict):
        __getattr__ = dict.__getitem__

    from snakemake_executor_plugin_slurm.submit_string import get_submit_command

    res = jobs(paper_plan, "train_verl")[0]["resources"]
    job = SimpleNamespace(
        resources=Resources(gpu=int(res["gpu"]), nodes=int(res["nodes"]), mem_mb=256000, runtime=2880), threads=32
    )
    assert set_gres_string(job).strip() == "--gpus=4"
    params = dict(run_uuid="u", slurm_logfile="log", comment_str="c", account="-A a", partition="-p gpu", workdir="/w")
    assert "--nodes=1" in get_submit_command(job, params)


def test_the_smoke_run_plans_two_two_gpu_trainings_and_their_evaluation():
    """`snakemake --profile slurm --configfile config/smoke.yaml`: the first run on a cluster."""
    smoke = yaml.safe_load((REPO / "config" / "smoke.yaml").read_text())
    plan = dry_run("--configfile", "config/smoke.yaml")
    train = jobs(plan, "train_verl")
    assert {(j["wildcards"]["model"], j["wildcards"]["method"]) for j in train} == {
        ("medgemma-4b", "grpo"),
        ("medgemma-4b", "eqpo"),
    }
    assert all(j["resources"]["gpu"] == "2" and j["resources"]["nodes"] == "1" for j in train)
    assert len(jobs(plan, "predict_vllm")) == 2
    # small jobs from config/smoke.yaml's gpu_jobs: runtime (minutes), memory (MB), CPUs
    assert {(j["resources"]["runtime"], j["resources"]["mem_mb"]) for j in train} == {("120", "128000")}
    assert {(j["resources"]["runtime"], j["resources"]["mem_mb"]) for j in jobs(plan, "predict_vllm")} == {
        ("60", "128000")
    }
    assert smoke["gpu_jobs"]["train_verl"] == {"runtime": 120, "mem_mb": 128000, "threads": 32}
    assert [j["wildcards"]["dataset"] for j in jobs(plan, "prepare_dataset")] == ["PAD-UFES-20"]
    assert "results/smoke/tables/table2.csv" in plan
    assert smoke["train"]["steps"] == 2 and smoke["evaluation"]["max_samples"] == 64


def test_the_profile_deploys_the_conda_environments_and_the_gpu_rules_get_the_lock():
    """Without a deployment method, Snakemake ignores `conda:` and the GPU jobs would run in the login
    Python (CPU torch, no vLLM); the GPU environment built is the lock (envs/gpu.lock.yaml)."""
    assert PROFILE["software-deployment-method"] == "conda"
    text = (REPO / "slurm" / "config.yaml").read_text()
    assert text.count("conda-prefix:") == 1 and PROFILE["conda-prefix"]
    plan = dry_run("--configfile", "config/smoke.yaml")
    created = re.findall(r"^Conda environment (\S+) will be created", plan, flags=re.M)
    assert "envs/gpu.lock.yaml" in created and "envs/gpu.yaml" not in created
    for rule in ("train_verl", "predict_vllm"):  # the rules that need the GPU environment name the lock
        assert re.search(r"conda:\s*\"\.\./\.\./envs/gpu\.lock\.yaml\"", rule_text(rule)), rule


def rule_text(name: str) -> str:
    """The text of rule ``name`` in workflow/rules/ (from `rule name:` to the next rule)."""
    return next(block for block in re.split(r"\n(?=rule )", RULES) if block.startswith(f"rule {name}:"))


# The rules as Snakemake loads them (its API): whether each is a local rule, and its threads (the dry-run
# listing shows neither). `_localrules` is where Snakemake's `localrule:` directive records it.
RULE_FACTS = """
import json, sys
from pathlib import Path
from snakemake.api import SnakemakeApi
from snakemake.settings.types import ConfigSettings, ResourceSettings
with SnakemakeApi() as api:
    wf = api.workflow(resource_settings=ResourceSettings(), snakefile=Path("Snakefile"),
                      config_settings=ConfigSettings(configfiles=[Path(f) for f in ["config.yaml", *sys.argv[1:]]]))
    workflow = wf._workflow
    print(json.dumps({r.name: {"local": r.name in workflow._localrules,
                               "threads": getattr(r.resources["_cores"], "value", r.resources["_cores"])}
                      for r in workflow.rules}))
"""


def rule_facts(*configfiles: str) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", RULE_FACTS, *configfiles], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_gpu_job_resources_follow_the_config(tmp_path):
    overlay = tmp_path / "resources.yaml"
    overlay.write_text(
        "gpu_jobs:\n  train_verl: {runtime: 1440, mem_mb: 190000, threads: 24}\n"
        "  predict_vllm: {runtime: 90, mem_mb: 100000, threads: 4}\n"
    )
    plan = dry_run("--configfile", str(overlay))
    assert {(j["resources"]["runtime"], j["resources"]["mem_mb"]) for j in jobs(plan, "train_verl")} == {
        ("1440", "190000")
    }
    assert {(j["resources"]["runtime"], j["resources"]["mem_mb"]) for j in jobs(plan, "predict_vllm")} == {
        ("90", "100000")
    }
    facts = rule_facts(str(overlay))
    assert (facts["train_verl"]["threads"], facts["predict_vllm"]["threads"]) == (24, 4)
    paper = rule_facts()
    assert [paper[r]["threads"] for r in ("train_verl", "predict_vllm", "train_trl", "predict_trl")] == [
        PAPER["gpu_jobs"][r]["threads"] for r in ("train_verl", "predict_vllm", "train_trl", "predict_trl")
    ]


def test_downloads_run_on_their_partition_or_where_snakemake_runs(tmp_path):
    """prepare_dataset is a cluster job on the partition the profile gives it, unless
    data.prepare_locally makes it a local rule (compute nodes without internet)."""
    assert "slurm_partition" in PROFILE["set-resources"]["prepare_dataset"]
    assert rule_facts("config/smoke.yaml")["prepare_dataset"]["local"] is False
    overlay = tmp_path / "local.yaml"
    overlay.write_text("data:\n  prepare_locally: true\n")
    assert rule_facts("config/smoke.yaml", str(overlay))["prepare_dataset"]["local"] is True


def test_cluster_values_live_in_one_place():
    """Account and CPU partition are set once, as defaults; GPU rules only name their partition and
    take the GPU count from the rule (train_verl) so config.yaml's train.gpus stays the one source."""
    text = (REPO / "slurm" / "config.yaml").read_text()
    assert text.count("slurm_account") == 1 and "edit these" in text
    assert set(PROFILE["default-resources"]) >= {"slurm_account", "slurm_partition"}
    assert "cpus_per_task" not in PROFILE["default-resources"]  # would override cpus_per_gpu / threads
    assert "gpu" not in PROFILE["set-resources"]["train_verl"]
    assert PROFILE["executor"] == "slurm" and PROFILE["rerun-incomplete"] is True
    for key in ("jobs", "latency-wait", "retries", "slurm-logdir"):
        assert key in PROFILE
