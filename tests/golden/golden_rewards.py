"""A reward with two values for the golden runs, so that whole groups tie and dynamic sampling drops them."""


def mentions_the(prompts, completions, references):
    return [1.0 if " the " in f" {c.lower()} " else 0.0 for c in completions]
