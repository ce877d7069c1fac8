"""Data in: records from files, saved datasets, the Hub or the demo, as tokenized prompts and preference pairs.

    prompts.py      records -> Example (prompt ids, references, columns); PromptSampler (the data order)
    demo.py         the demo task, built from the running Python's standard library
    tasks.py        reasoning_gym:<task> sources: train / validation / test generated offline from disjoint seeds
    chat.py         conversations -> the text a model reads (one place for SFT, RL and evaluation)
    preferences.py  preference pair formats -> PreferencePair

Hands on Example and PreferencePair to rollout/, training/ and evaluation/.
"""


def __getattr__(name):  # the names of llm_pg 0.1's data.py, for one release
    from llm_pg import moved_attribute

    return moved_attribute("data", name)
