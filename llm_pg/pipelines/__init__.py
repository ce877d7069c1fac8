"""Pipelines of several commands: `llm-pg rlhf` (SFT -> proxy and gold reward models -> RL -> comparison) and
`llm-pg compare` (arms of one config over several seeds, with control arms).

    rlhf.py            the stages in order, each done once for its inputs
    rlhf_data.py       preference pairs -> prompt records and the two disjoint halves of the pairs
    rlhf_evaluate.py   sample both policies on the test prompts, score them, run the comparison, write the report
    rlhf_statistics.py the comparison's statistics (gains, win rate, KL, length) and its markdown
    rlhf_quality.py    the answers' quality: perplexity under the starting model, repetition, cut and empty answers
    compare.py         the arms x seeds, one `llm-pg train` at a time, resumable
    compare_report.py  each arm against the start and each control, per seed and across seeds; the report

Hands on run folders and their reports.
"""
