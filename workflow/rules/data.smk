if config["data"]["source"] == "demo":

    rule demo_cohort:
        """The embedded synthetic cohort (plus any data.custom datasets with feature columns)."""
        output:
            cohort=COHORT,
            summary=f"{RESULTS}/data/cohort_summary.csv",
            table1=report(f"{RESULTS}/tables/table1.csv", caption="../report/table1.rst", category="Tables"),
        params:
            settings=config["data"]["demo"],
            datasets=config["data"]["datasets"],
            custom=config["data"]["custom"],
        log:
            f"{LOGS}/demo_cohort.log",
        conda:
            "../../envs/cpu.yaml"
        resources:
            mem_mb=2000,
            runtime=10,
        script:
            "../scripts/demo_cohort.py"

else:

    rule prepare_dataset:
        """Download (or check the hand-placed files of), verify and preprocess one real dataset.
        Missing files or credentials stop the run with instructions (exit status 3)."""
        output:
            f"{DATA}/{{dataset}}/table.parquet",
        params:
            seed=config["data"]["seed"],
            split=config["data"]["split"],
            skip_unavailable=config["data"]["skip_unavailable"],
            # the datasets with a choice of source (a change re-runs only that dataset's job)
            release=lambda w: release_of(w.dataset),
        log:
            f"{LOGS}/prepare_dataset/{{dataset}}.log",
        wildcard_constraints:
            dataset=one_of(config["data"]["datasets"]),
        # compute nodes without internet: download where Snakemake runs (data.prepare_locally)
        localrule: config["data"]["prepare_locally"]
        conda:
            "../../envs/data.yaml"
        resources:
            mem_mb=16000,
            runtime=1440,
        script:
            "../scripts/prepare_dataset.py"

    rule paper_cohort:
        """All datasets (and data.custom ones) in one cohort table; paper Table 1."""
        input:
            tables=expand(f"{DATA}/{{dataset}}/table.parquet", dataset=config["data"]["datasets"]),
            custom=[entry["path"] for entry in config["data"]["custom"]],  # your own datasets' CSVs
        output:
            cohort=COHORT,
            table1=report(f"{RESULTS}/tables/table1.csv", caption="../report/table1.rst", category="Tables"),
        params:
            custom=config["data"]["custom"],
        log:
            f"{LOGS}/paper_cohort.log",
        conda:
            "../../envs/cpu.yaml"
        resources:
            mem_mb=8000,
            runtime=30,
        script:
            "../scripts/paper_cohort.py"


rule export_verl:
    """verl RLHFDataset parquet files: train/val/test, GRPO+RS oversampled, no-demographics."""
    input:
        cohort=COHORT,
    output:
        expand(f"{DATA}/verl/{{part}}.parquet", part=["train", "val", "test", "train_rs", "train_nodemo"]),
    params:
        seed=config["data"]["seed"],
        custom=config["data"]["custom"],
        records=config["data"]["records"],
        covid_blues_options=config["data"]["covid_blues_options"],
        group_definition=OPTIONS.group_definition,
    log:
        f"{LOGS}/export_verl.log",
    conda:
        "../../envs/cpu.yaml"
    resources:
        mem_mb=8000,
        runtime=60,
    script:
        "../scripts/export_verl.py"
