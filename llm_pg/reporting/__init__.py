"""What a finished run shows: the report (markdown, HTML, plots) and its push to the Hub.

    report.py     report.md and report.html from a run folder
    plots.py      the report's PNG plots
    rm_report.py  `llm-pg rm`'s eval.json and report.md: held-out accuracy beside the length baselines
    hub.py        `llm-pg push`: policy, tokenizer, config, report and model card to the Hub

Hands on the report files of a run folder to the trainers (written when a run ends), pipelines/ and the CLI.
"""
