"""Snakemake script of rule tiny_vl_fixture (eqpo.data.demo.tiny_vl)."""

from pathlib import Path

from eqpo.workflow.pipeline import logged

with logged(snakemake.log[0]):
    from eqpo.data.demo.tiny_vl import build_qwen_vl, check_custom_entry, custom_dataset

    samples = Path(snakemake.output.samples)
    entry = custom_dataset(samples.parent, seed=snakemake.params.seed)
    check_custom_entry(snakemake.params.custom, entry)
    build_qwen_vl(Path(snakemake.output.model), seed=snakemake.params.seed)
    print(f"tiny dataset {samples} and tiny Qwen2.5-VL {snakemake.output.model} written")
