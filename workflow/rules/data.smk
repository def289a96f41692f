if config["data"]["source"] == "demo":

    rule demo_cohort:
        output:
            cohort=COHORT,
            summary=f"{RESULTS}/data/cohort_summary.csv",
        params:
            settings=config["data"].get("demo", {}),
            datasets=config["data"]["datasets"],
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
        output:
            f"{DATA}/datasets/{{dataset}}.parquet",
        log:
            f"{LOGS}/prepare_dataset/{{dataset}}.log",
        conda:
            "../../envs/cpu.yaml"
        resources:
            mem_mb=16000,
            runtime=240,
        script:
            "../scripts/prepare_dataset.py"

    rule paper_cohort:
        input:
            expand(f"{DATA}/datasets/{{dataset}}.parquet", dataset=config["data"]["datasets"]),
        output:
            COHORT,
        log:
            f"{LOGS}/paper_cohort.log",
        conda:
            "../../envs/cpu.yaml"
        resources:
            mem_mb=8000,
            runtime=30,
        script:
            "../scripts/paper_cohort.py"
