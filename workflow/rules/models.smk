"""Models: the defect classifier (stage 1) and the U-Net (stage 2), one engine."""


rule train_classifier:
    input:
        raw="resources/raw",
        masks="results/masks",
        split="results/split.csv",
        code=stage_code("train"),
    output:
        model="models/classifier.pt",
        history="results/train/classifier.csv",
        curves=report("results/train/classifier.png", caption="../report/train_classifier.rst", category="Training"),
    params:
        config=CONFIG,
        settings=settings("seed", "split", "train", "augment", "classifier"),
    log:
        "logs/train_classifier.log",
    benchmark:
        "logs/benchmarks/train_classifier.tsv"
    threads: workflow.cores
    resources:
        gpu=gpus(),
    conda:
        "../envs/steelflow.yaml"
    shell:
        "steelflow train classifier {params.config} --raw {input.raw} "
        "--masks {input.masks} --split {input.split} --out {output.model} "
        "--history {output.history} --curves {output.curves} --resume > {log} 2>&1"


rule train_unet:
    input:
        raw="resources/raw",
        masks="results/masks",
        split="results/split.csv",
        code=stage_code("train"),
    output:
        model="models/unet.pt",
        history="results/train/unet.csv",
        curves=report("results/train/unet.png", caption="../report/train_unet.rst", category="Training"),
    params:
        config=CONFIG,
        settings=settings("seed", "split", "train", "augment", "unet"),
    log:
        "logs/train_unet.log",
    benchmark:
        "logs/benchmarks/train_unet.tsv"
    threads: workflow.cores
    resources:
        gpu=gpus(),
    conda:
        "../envs/steelflow.yaml"
    shell:
        "steelflow train unet {params.config} --raw {input.raw} "
        "--masks {input.masks} --split {input.split} --out {output.model} "
        "--history {output.history} --curves {output.curves} --resume > {log} 2>&1"
