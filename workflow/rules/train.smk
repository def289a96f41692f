rule pretrain_cpu:
    """Warm start of a CPU demo base model on a majority-skewed subset."""
    input:
        cohort=COHORT,
    output:
        f"{RESULTS}/{{model}}/pretrained.pt",
    params:
        model=model_config,
        settings=config["pretrain"],
    log:
        f"{LOGS}/pretrain/{{model}}.log",
    wildcard_constraints:
        model=one_of(models_with("cpu")),
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    conda:
        "../../envs/cpu.yaml"
    script:
        "../scripts/pretrain_cpu.py"


rule train_cpu:
    """RL training of one method on one CPU base model (resumes from RUN/ckpt after a kill)."""
    input:
        cohort=COHORT,
        pretrained=f"{RESULTS}/{{model}}/pretrained.pt",
    output:
        policy=f"{RUN}/final.pt",
        dynamics=f"{RUN}/dynamics.jsonl",
        steps=f"{RUN}/steps.jsonl",
        clusters=f"{RUN}/clusters.parquet",
    params:
        settings=run_settings,
        cpu=config["cpu"],
        run_dir=run_dir,
    log:
        f"{LOGS}/train/{{model}}/{{method}}/seed{{seed}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/train/{{model}}/{{method}}/seed{{seed}}.tsv"
    wildcard_constraints:
        model=one_of(models_with("cpu")),
    threads: 1
    resources:
        mem_mb=2000,
        runtime=60,
    conda:
        "../../envs/cpu.yaml"
    script:
        "../scripts/train_cpu.py"


rule train_verl:
    """RL training with verl + vLLM rollouts on GPUs (one node, or train.nnodes nodes over Ray)."""
    input:
        train=verl_train_file,
        val=f"{DATA}/verl/val.parquet",
    output:
        checkpoint=directory(f"{RUN}/checkpoint"),
        dynamics=f"{RUN}/dynamics.jsonl",
        steps=f"{RUN}/steps.jsonl",
        clusters=f"{RUN}/clusters.parquet",
    params:
        settings=run_settings,  # rerun when any of the run's settings changes
    log:
        f"{LOGS}/train/{{model}}/{{method}}/seed{{seed}}.log",
    wildcard_constraints:
        model=one_of(models_with("verl")),
    # Ray gets exactly these CPUs (ray_init.num_cpus; on a multi-node run, --num-cpus on every node).
    threads: config["gpu_jobs"]["train_verl"]["threads"]
    # One node: nodes=1 and gpu=N (sbatch --nodes=1 --gpus=N; without --nodes SLURM may split the N
    # GPUs over two nodes). train.nnodes > 1: nodes=nnodes and gres=gpu:N, because SLURM plugin
    # 2.8.0 maps gpu to --gpus (a job TOTAL that SLURM may split unevenly over the nodes) but gres
    # to --gres (PER NODE); verl needs train.gpus on every node. mem_mb (--mem) is per node. The job
    # then starts a Ray cluster over the nodes (eqpo.backends.verl.ray_cluster). Runtime and memory:
    # gpu_jobs.train_verl of the config.
    resources:
        **gpu_job("train_verl"),
        **(
            {"nodes": 1, "gpu": config["train"]["gpus"]}
            if config["train"]["nnodes"] == 1
            else {
                "nodes": config["train"]["nnodes"],
                "gres": f"gpu:{config['train']['gpus']}",
            }
        ),
    conda:
        "../../envs/gpu.lock.yaml"
    script:
        "../scripts/train_verl.py"
