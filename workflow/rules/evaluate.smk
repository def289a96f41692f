rule predict_cpu:
    """Greedy answers of the trained CPU policy on the test split (the predictions table of docs/method.md §4.1)."""
    input:
        cohort=COHORT,
        policy=f"{RUN}/final.pt",
    output:
        f"{RUN}/predictions.parquet",
    params:
        options=run_options,  # the run's own reward scores the `reward` column
    log:
        f"{LOGS}/predict/{{model}}/{{method}}/seed{{seed}}.log",
    wildcard_constraints:
        model=one_of(models_with("cpu")),
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../../envs/cpu.yaml"
    script:
        "../scripts/predict_cpu.py"


rule predict_vllm:
    """Checkpoint -> HF weights -> vLLM greedy answers on the test split."""
    input:
        test=f"{DATA}/verl/test.parquet",
        checkpoint=f"{RUN}/checkpoint",
    output:
        f"{RUN}/predictions.parquet",
    params:
        settings=run_settings,  # rerun when any of the run's settings changes
        engine=config["evaluation"]["engine"],
    log:
        f"{LOGS}/predict/{{model}}/{{method}}/seed{{seed}}.log",
    wildcard_constraints:
        model=one_of(models_with("verl")),
    threads: config["gpu_jobs"]["predict_vllm"]["threads"]
    resources:
        gpu=1,
        **gpu_job("predict_vllm"),
    conda:
        "../../envs/gpu.lock.yaml"
    script:
        "../scripts/predict_vllm.py"


rule score:
    """Fairness metrics of one run's test predictions (the same code for both backends)."""
    input:
        f"{RUN}/predictions.parquet",
    output:
        f"{RUN}/metrics.json",
    params:
        options=run_options,  # the run's reproduction options; rerun when one changes
    log:
        f"{LOGS}/score/{{model}}/{{method}}/seed{{seed}}.log",
    threads: 1
    resources:
        mem_mb=4000,
        runtime=10,
    conda:
        "../../envs/cpu.yaml"
    script:
        "../scripts/score.py"
