# The trl backend: one GPU (or CPU), no cluster. EQPO inside TRL's GRPOTrainer (eqpo.backends.trl), trained
# on the same verl export as the GPU backend and evaluated on the same test prompts; it writes the
# same run files, so every table and figure reads it like the other backends.


rule train_trl:
    """RL training with TRL's GRPOTrainer and the method's estimator on one GPU or the CPU (resumes
    from RUN/ckpt after a kill)."""
    input:
        train=verl_train_file,
        val=f"{DATA}/verl/val.parquet",
    output:
        model=directory(f"{RUN}/model"),
        dynamics=f"{RUN}/dynamics.jsonl",
        steps=f"{RUN}/steps.jsonl",
        clusters=f"{RUN}/clusters.parquet",
    params:
        settings=run_settings,
        trl=config["trl"],
        custom=config["data"]["custom"],
        run_dir=run_dir,
    log:
        f"{LOGS}/train/{{model}}/{{method}}/seed{{seed}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/train/{{model}}/{{method}}/seed{{seed}}.tsv"
    wildcard_constraints:
        model=one_of(models_with("trl")),
    threads: config["gpu_jobs"]["train_trl"]["threads"]
    resources:
        gpu=1,
        **gpu_job("train_trl"),
    conda:
        "../../envs/trl.yaml"
    script:
        "../scripts/train_trl.py"


rule predict_trl:
    """Greedy answers of the TRL-trained model on the test split (plain generate; vLLM when installed)."""
    input:
        test=f"{DATA}/verl/test.parquet",
        model=f"{RUN}/model",
    output:
        f"{RUN}/predictions.parquet",
    params:
        settings=run_settings,
        trl=config["trl"],
        custom=config["data"]["custom"],
    log:
        f"{LOGS}/predict/{{model}}/{{method}}/seed{{seed}}.log",
    wildcard_constraints:
        model=one_of(models_with("trl")),
    threads: config["gpu_jobs"]["predict_trl"]["threads"]
    resources:
        gpu=1,
        **gpu_job("predict_trl"),
    conda:
        "../../envs/trl.yaml"
    script:
        "../scripts/predict_trl.py"
