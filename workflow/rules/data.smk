"""Data: record the config, fetch the Kaggle layout, decode the masks, explore, split into folds."""


rule config:
    input:
        records=[rerun_marker(stage) for stage in STAGE_SECTIONS],  # it rewrites the records
    output:
        config="results/config.yaml",
        stages=STAGE_FILES,
    params:
        config=CONFIG,
        **rule_params(config, "config"),
    log:
        "logs/config.log",
    conda:
        "../envs/steelflow.yaml"
    shell:
        "steelflow config {params.config} --out {output.config} --stages results/stages "
        "> {log} 2>&1"


rule fetch:
    input:
        record=rerun_marker("fetch"),
        local=local_source,  # a local zip or folder (and its files): a newer one fetches again
    output:
        directory("resources/raw"),
    params:
        config=CONFIG,
        **rule_params(config, "fetch"),
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
        record=rerun_marker("masks"),
        raw="resources/raw",
    output:
        directory("results/masks"),
    params:
        **rule_params(config, "masks"),
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
        record=rerun_marker("eda"),
        raw="resources/raw",
        masks="results/masks",
    output:
        stats="results/eda/stats.json",
        balance=report("results/eda/class_balance.png", caption="../report/class_balance.rst", category="Data"),
        per_image=report("results/eda/defects_per_image.png", caption="../report/defects_per_image.rst", category="Data"),
        areas=report("results/eda/mask_areas.png", caption="../report/mask_areas.rst", category="Data"),
        examples=report("results/eda/examples.png", caption="../report/examples.rst", category="Data"),
    params:
        config=CONFIG,
        **rule_params(config, "eda"),
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
        record=rerun_marker("split"),
        masks="results/masks",
    output:
        "results/split.csv",
    params:
        config=CONFIG,
        **rule_params(config, "split"),
    log:
        "logs/split.log",
    benchmark:
        "logs/benchmarks/split.tsv"
    conda:
        "../envs/steelflow.yaml"
    shell:
        "steelflow split {params.config} --masks {input.masks} --out {output} > {log} 2>&1"
