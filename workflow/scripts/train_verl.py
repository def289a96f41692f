"""Snakemake script of rule train_verl: one verl GPU training run (eqpo.backends.verl.launch)."""

from pathlib import Path

from eqpo.workflow.pipeline import logged

with logged(snakemake.log[0]):
    try:
        from eqpo.backends.verl.launch import run_training
    except ImportError as err:  # eqpo.backends.verl needs verl: say which environment is missing it
        raise SystemExit(f"GPU training needs verl[vllm]==0.9.1 in this environment (envs/gpu.yaml): {err}") from err
    from eqpo.runs.settings import RunSettings

    run_training(
        RunSettings.from_dict(snakemake.params.settings),
        int(snakemake.wildcards.seed),
        run_dir=Path(snakemake.output.dynamics).parent,
        data_dir=Path(snakemake.input.val).parent,
        num_cpus=snakemake.threads,
    )
