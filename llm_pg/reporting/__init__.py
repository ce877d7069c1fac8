"""What a finished run shows: the report (markdown, HTML, plots) and its push to the Hub.

    report.py  report.md and report.html from a run folder
    plots.py   the report's PNG plots
    hub.py     `llm-pg push`: policy, tokenizer, config, report and model card to the Hub
"""
