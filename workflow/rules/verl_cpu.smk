# Checking the verl path on a machine without GPU (config/verl_cpu.yaml): a tiny image dataset and a
# tiny warm-started Qwen2.5-VL built here, then the GPU rules (export_verl, train_verl with
# train.device: cpu, predict_vllm with evaluation.engine: hf) run on them.


rule tiny_vl_fixture:
    """A tiny image dataset (a data.custom CSV and PNGs) and a tiny Qwen2.5-VL warm-started to answer
    in the prompt's format (eqpo.data.demo.tiny_vl), under data/<experiment>/tiny_vl/; used where the config
    names them (data.custom path, models.<m>.path)."""
    output:
        samples=f"{DATA}/tiny_vl/samples.csv",
        model=directory(f"{DATA}/tiny_vl/model"),
    params:
        custom=config["data"]["custom"],
        seed=config["seeds"][0],
    log:
        f"{LOGS}/tiny_vl_fixture.log",
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../../envs/trl.yaml"
    script:
        "../scripts/tiny_vl_fixture.py"
