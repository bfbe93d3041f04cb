"""Models: the defect classifier (stage 1) and the U-Net (stage 2), one engine; one
job per network and fold of train.folds (fold {fold} validates, the others train).
With classifier.pretrained: unet (the default) a fold's classifier starts from the
encoder of that fold's U-Net, so it trains after it."""


wildcard_constraints:
    fold=r"\d+",


rule train_classifier:
    input:
        record=rerun_marker("train_classifier"),
        raw="resources/raw",
        masks="results/masks",
        split="results/split.csv",
        start=classifier_start,
    output:
        model="models/classifier_f{fold}.pt",
        history="results/train/classifier_f{fold}.csv",
        curves=report(
            "results/train/classifier_f{fold}.png",
            caption="../report/train_classifier.rst",
            category="Training",
            subcategory="fold {fold}",
        ),
    params:
        config=CONFIG,
        **rule_params(config, "train_classifier"),
        start=lambda wildcards, input: f"--start {input.start} " if input.start else "",
    log:
        "logs/train_classifier_f{fold}.log",
    benchmark:
        "logs/benchmarks/train_classifier_f{fold}.tsv"
    threads: train_threads()
    resources:
        gpu=gpus(),
        disk_mb=train_disk_mb("classifier"),
    conda:
        "../envs/steelflow.yaml"
    shell:
        "steelflow train classifier {params.config} --fold {wildcards.fold} --raw {input.raw} "
        "--masks {input.masks} --split {input.split} --out {output.model} "
        "--history {output.history} --curves {output.curves} --resume "
        "{params.start}> {log} 2>&1"


rule train_unet:
    input:
        record=rerun_marker("train_unet"),
        raw="resources/raw",
        masks="results/masks",
        split="results/split.csv",
    output:
        model="models/unet_f{fold}.pt",
        history="results/train/unet_f{fold}.csv",
        curves=report(
            "results/train/unet_f{fold}.png",
            caption="../report/train_unet.rst",
            category="Training",
            subcategory="fold {fold}",
        ),
    params:
        config=CONFIG,
        **rule_params(config, "train_unet"),
    log:
        "logs/train_unet_f{fold}.log",
    benchmark:
        "logs/benchmarks/train_unet_f{fold}.tsv"
    threads: train_threads()
    resources:
        gpu=gpus(),
        disk_mb=train_disk_mb("unet"),
    conda:
        "../envs/steelflow.yaml"
    shell:
        "steelflow train unet {params.config} --fold {wildcards.fold} --raw {input.raw} "
        "--masks {input.masks} --split {input.split} --out {output.model} "
        "--history {output.history} --curves {output.curves} --resume > {log} 2>&1"
