import os
import sys
from pathlib import Path

from snakemake.utils import min_version, validate

min_version("9.0")


configfile: "config.yaml"


validate(config, "../schemas/config.schema.yaml")

# Scripts import the eqpo library from this checkout, also inside per-rule environments. PYTHONPATH
# is set here, not required from the user (so no envvars directive).
SRC = str(Path(workflow.basedir) / "src")
os.environ.update(PYTHONPATH=os.pathsep.join(p for p in (SRC, os.getenv("PYTHONPATH", "")) if p))
sys.path.insert(0, SRC)

from eqpo.data.export import train_part
from eqpo.core.methods import CLUSTERING, EMPHASISED
from eqpo.runs.settings import RunSettings, reproduction_options

# Reproduction options (metrics, groups, reward), checked once with errors that name the key; the
# experiment-wide rules take them from here (a run's own reward: run_options).
OPTIONS = reproduction_options(config)

EXP = config["experiment"]
DATA = f"{config['data']['root']}/{EXP}"
COHORT = f"{DATA}/cohort.parquet"
RESULTS = f"results/{EXP}"
FIGURES = f"figures/{EXP}"
LOGS = f"logs/{EXP}"
RUN = f"results/{EXP}/{{model}}/{{method}}/seed{{seed}}"


def _check_models():
    unknown = [m for m in config["base_models"] if m not in config["models"]]
    if unknown:
        raise ValueError(
            f"base_models {unknown} are not defined under `models:` in the config; "
            f"defined: {sorted(config['models'])}"
        )


_check_models()


def models_with(backend):
    return [m for m in config["base_models"] if config["models"][m]["backend"] == backend]


def one_of(names):
    """Wildcard constraint matching exactly these names (matches nothing when empty)."""
    return "|".join(map(re_escape, names)) if names else "(?!x)x"


def release_of(dataset):
    """The configured source choice of a dataset that has one (eqpo.data.prepare.get_sources):
    Hemorrhage's ct-ich release, COVID-BLUES' git revision; "" for the others."""
    choices = {"Hemorrhage": "hemorrhage_release", "COVID-BLUES": "covid_blues_commit"}
    return str(config["data"][choices[dataset]]) if dataset in choices else ""


def re_escape(name):
    import re

    return re.escape(name)


def runs(pattern, methods=None):
    return expand(
        pattern,
        model=config["base_models"],
        method=methods or config["methods"],
        seed=config["seeds"],
    )


def model_config(wildcards):
    return config["models"][wildcards.model]


def run_dir(wildcards):
    return RUN.format(**wildcards)


def run_settings(wildcards):
    """The run's settings (eqpo.runs.settings.RunSettings), resolved once here, as plain values: the
    one param a run rule hands its script (RunSettings.from_dict), so a change of any reruns the run."""
    return RunSettings.from_config(config, wildcards.model, wildcards.method).as_dict()


def run_options(wildcards):
    """The run's reproduction options (RunSettings.options, with the run's own reward), as plain values."""
    return run_settings(wildcards)["options"]


def verl_train_file(wildcards):
    """GRPO+RS trains on the oversampled export; every other method on the plain training split."""
    return f"{DATA}/verl/{train_part(wildcards.method)}.parquet"


def gpu_job(rule_name):
    """runtime and mem_mb of a GPU job, from the config's gpu_jobs block (keyed by rule name)."""
    job = config["gpu_jobs"][rule_name]
    return {"runtime": job["runtime"], "mem_mb": job["mem_mb"]}


def hierarchical_methods():
    """Configured methods whose estimator forms implicit groups (eqpo.core.methods.CLUSTERING)."""
    return [m for m in config["methods"] if m in CLUSTERING]


def compared_methods():
    """Methods shown in the per-group comparison (paper Fig. 3): GRPO and EQPO (eqpo.core.methods.EMPHASISED)
    when both run."""
    return [m for m in EMPHASISED if m in config["methods"]]


def notebook_parameters(figure_dir=None, table_dir=None, **inputs):
    """Papermill parameters of a notebook rule: each keyword names a notebook parameter and the rule
    input that fills it (a list input stays a list); figure_dir / table_dir are passed as given."""

    def parameters(wildcards, input):
        values = {name: (list(input[key]) if isinstance(input[key], list) else str(input[key]))
                  for name, key in inputs.items()}
        values.update({k: v for k, v in (("figure_dir", figure_dir), ("table_dir", table_dir)) if v is not None})
        return values

    return parameters


def final_targets():
    tables = f"{RESULTS}/tables"
    targets = [
        f"{RESULTS}/plan.md",
        f"{tables}/table1.csv",
        f"{tables}/table2.csv",
        f"{tables}/table2_ci.csv",
        f"{tables}/paper_vs_ours_table2.csv",
        f"{tables}/table3.csv",
        f"{FIGURES}/training_dynamics.png",
    ]
    if len(compared_methods()) == 2:
        targets.append(f"{FIGURES}/group_f1.png")
    if hierarchical_methods():
        targets += [f"{tables}/cluster_stability.csv", f"{FIGURES}/cluster_stability.png"]
    return targets


wildcard_constraints:
    method="|".join(config["methods"]),
    seed=r"\d+",
