"""Data: fetch the Kaggle layout, decode the masks, explore, split into folds."""


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


rule masks:
    input:
        "resources/raw",
    output:
        directory("results/masks"),
    log:
        "logs/masks.log",
    benchmark:
        "logs/benchmarks/masks.tsv"
    conda:
        "../envs/steelflow.yaml"
    shell:
        "steelflow masks --raw {input} --out {output} > {log} 2>&1"


rule eda:
    input:
        raw="resources/raw",
        masks="results/masks",
    output:
        stats="results/eda/stats.json",
        balance=report("results/eda/class_balance.png", caption="../report/class_balance.rst", category="Data"),
        per_image=report("results/eda/defects_per_image.png", caption="../report/defects_per_image.rst", category="Data"),
        areas=report("results/eda/mask_areas.png", caption="../report/mask_areas.rst", category="Data"),
        examples=report("results/eda/examples.png", caption="../report/examples.rst", category="Data"),
    params:
        config_file=CONFIG_FILE,
        settings={"seed": config["seed"], "eda": config["eda"]},
    log:
        "logs/eda.log",
    benchmark:
        "logs/benchmarks/eda.tsv"
    conda:
        "../envs/steelflow.yaml"
    shell:
        "steelflow eda --config {params.config_file} --raw {input.raw} --masks {input.masks} "
        "--stats {output.stats} --class-balance {output.balance} "
        "--defects-per-image {output.per_image} --mask-areas {output.areas} "
        "--examples {output.examples} > {log} 2>&1"


rule split:
    input:
        "results/masks",
    output:
        "results/split.csv",
    params:
        config_file=CONFIG_FILE,
        settings={"seed": config["seed"], "split": config["split"]},
    log:
        "logs/split.log",
    benchmark:
        "logs/benchmarks/split.tsv"
    conda:
        "../envs/steelflow.yaml"
    shell:
        "steelflow split --config {params.config_file} --masks {input} --out {output} > {log} 2>&1"
