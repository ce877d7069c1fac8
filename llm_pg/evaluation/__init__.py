"""Held-out evaluation: generate on a split, score, and say whether a difference is real.

    heldout.py              evaluate_examples: generation + metrics on a split -> JSON and per-sample JSONL
    generations.py          the per-sample JSONL: its name, writing and reading it (no torch: eval --compare, report)
    metrics.py              per-sample metrics and corpus scores (BLEU, ROUGE, chrF, perplexity, pass@k, ...)
    meaning.py              metrics of meaning: embedding similarity, BERTScore-style F1
    bootstrap.py            paired bootstrap intervals and p-values
    periodic.py             before/after evaluation, validation during training, the best policy, the hacking check
    preference_accuracy.py  a reward model's held-out pairwise accuracy beside the length baselines, and by length
    length_control.py       a policy's gain at matched length (regression on length, length strata)
    commands.py             `llm-pg eval`: evaluate a model, or compare two evaluations

Hands on scores to reporting/ and the trainers (periodic validation).
"""


def __getattr__(name):  # the names of llm_pg 0.1's evaluation.py, for one release
    from llm_pg import moved_attribute

    return moved_attribute("evaluation", name)
