"""Data: record the config, fetch the Kaggle layout, decode the masks, explore, split into folds."""


rule config:
    input:
        code=stage_code("config"),
    output:
        "results/config.yaml",
    params:
        config=CONFIG,
        settings=settings(*(section for section in config if section != "machine")),
    log:
        "logs/config.log",
    conda:
        "../envs/steelflow.yaml"
    shell:
        "steelflow config {params.config} --out {output} > {log} 2>&1"


rule fetch:
    input:
        code=stage_code("fetch"),
    output:
        directory("resources/raw"),
    params:
        config=CONFIG,
        settings=settings("seed", "data"),
    log:
        "logs/fetch.log",
    benchmark:
        "logs/benchmarks/fetch.tsv"
    threads: workflow.cores
    conda:
        "../envs/steelflow.yaml"
    shell:
        "steelflow fetch {params.config} --out {output} > {log} 2>&1"


rule masks:
    input:
        raw="resources/raw",
        code=stage_code("masks"),
    output:
        directory("results/masks"),
    log:
        "logs/masks.log",
    benchmark:
        "logs/benchmarks/masks.tsv"
    conda:
        "../envs/steelflow.yaml"
    shell:
        "steelflow masks --raw {input.raw} --out {output} > {log} 2>&1"


rule eda:
    input:
        raw="resources/raw",
        masks="results/masks",
        code=stage_code("eda"),
    output:
        stats="results/eda/stats.json",
        balance=report("results/eda/class_balance.png", caption="../report/class_balance.rst", category="Data"),
        per_image=report("results/eda/defects_per_image.png", caption="../report/defects_per_image.rst", category="Data"),
        areas=report("results/eda/mask_areas.png", caption="../report/mask_areas.rst", category="Data"),
        examples=report("results/eda/examples.png", caption="../report/examples.rst", category="Data"),
    params:
        config=CONFIG,
        settings=settings("seed", "eda"),
    log:
        "logs/eda.log",
    benchmark:
        "logs/benchmarks/eda.tsv"
    conda:
        "../envs/steelflow.yaml"
    shell:
        "steelflow eda {params.config} --raw {input.raw} --masks {input.masks} "
        "--stats {output.stats} --class-balance {output.balance} "
        "--defects-per-image {output.per_image} --mask-areas {output.areas} "
        "--examples {output.examples} > {log} 2>&1"


rule split:
    input:
        masks="results/masks",
        code=stage_code("split"),
    output:
        "results/split.csv",
    params:
        config=CONFIG,
        settings=settings("seed", "split"),
    log:
        "logs/split.log",
    benchmark:
        "logs/benchmarks/split.tsv"
    conda:
        "../envs/steelflow.yaml"
    shell:
        "steelflow split {params.config} --masks {input.masks} --out {output} > {log} 2>&1"
