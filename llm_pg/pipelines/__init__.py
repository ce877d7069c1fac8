"""Pipelines of several commands: `llm-pg rlhf` (SFT -> proxy and gold reward models -> RL -> comparison).

    rlhf.py          the stages in order, each done once for its inputs
    rlhf_data.py     preference pairs -> prompt records and the two disjoint halves of the pairs
    rlhf_report.py   sample both policies on the test prompts, score them, run the comparison, write the report
    rlhf_compare.py  the comparison's statistics (gains, win rate, KL, length) and its markdown
"""
