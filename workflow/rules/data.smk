"""Data: fetch the Kaggle layout (synthetic, Kaggle or local)."""


rule fetch:
    output:
        directory("resources/raw"),
    params:
        config_file=CONFIG_FILE,
        settings={"seed": config["seed"], "data": config["data"]},  # rerun when they change
    log:
        "logs/fetch.log",
    benchmark:
        "logs/benchmarks/fetch.tsv"
    threads: workflow.cores
    conda:
        "../envs/steelflow.yaml"
    shell:
        "steelflow fetch --config {params.config_file} --out {output} > {log} 2>&1"
