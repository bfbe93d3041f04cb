"""Answer: tune the post-processing out of fold, write the submission with the models of
every trained fold, score it; bundle the models for a Kaggle notebook."""


rule tune:
    input:
        record=rerun_marker("tune"),
        raw="resources/raw",
        masks="results/masks",
        split="results/split.csv",
        classifier=fold_models("classifier"),
        unet=fold_models("unet"),
    output:
        thresholds="results/thresholds.json",
        figure=report("results/thresholds.png", caption="../report/tune.rst", category="Tuning"),
    params:
        config=CONFIG,
        **rule_params(config, "tune"),
    log:
        "logs/tune.log",
    benchmark:
        "logs/benchmarks/tune.tsv"
    threads: workflow.cores
    resources:
        gpu=gpus(),
    conda:
        "../envs/steelflow.yaml"
    shell:
        "steelflow tune {params.config} --raw {input.raw} --masks {input.masks} "
        "--split {input.split} --classifier models/classifier_f{{fold}}.pt "
        "--unet models/unet_f{{fold}}.pt "
        "--out {output.thresholds} --figure {output.figure} > {log} 2>&1"


rule submit:
    input:
        record=rerun_marker("submit"),
        raw="resources/raw",
        classifier=fold_models("classifier"),
        unet=fold_models("unet"),
        thresholds="results/thresholds.json",
    output:
        "submission.csv",
    params:
        config=CONFIG,
        **rule_params(config, "submit"),
    log:
        "logs/submit.log",
    benchmark:
        "logs/benchmarks/submit.tsv"
    threads: workflow.cores
    resources:
        gpu=gpus(),
    conda:
        "../envs/steelflow.yaml"
    shell:
        "steelflow submit {params.config} --raw {input.raw} "
        "--classifier models/classifier_f{{fold}}.pt --unet models/unet_f{{fold}}.pt "
        "--thresholds {input.thresholds} "
        "--out {output} > {log} 2>&1"


rule bundle:
    input:
        record=rerun_marker("bundle"),
        classifier=fold_models("classifier"),
        unet=fold_models("unet"),
        thresholds="results/thresholds.json",
    output:
        directory("dist/kaggle"),
    params:
        config=CONFIG,
        **rule_params(config, "bundle"),
    log:
        "logs/bundle.log",
    benchmark:
        "logs/benchmarks/bundle.tsv"
    conda:
        "../envs/steelflow.yaml"
    shell:
        "steelflow bundle {params.config} --classifier models/classifier_f{{fold}}.pt "
        "--unet models/unet_f{{fold}}.pt --thresholds {input.thresholds} --out {output} "
        "> {log} 2>&1"


rule score:
    input:
        record=rerun_marker("score"),
        submission="submission.csv",
        raw="resources/raw",
    output:
        metrics="results/metrics.json",
        figure=report("results/predictions.png", caption="../report/predictions.rst", category="Results"),
    params:
        **rule_params(config, "score"),
    log:
        "logs/score.log",
    benchmark:
        "logs/benchmarks/score.tsv"
    conda:
        "../envs/steelflow.yaml"
    shell:
        "steelflow score --submission {input.submission} --truth resources/raw/test_truth.csv "
        "--allow-missing-truth --test-images resources/raw/test_images --out {output.metrics} "
        "--figure {output.figure} > {log} 2>&1"
