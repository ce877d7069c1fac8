"""The run folder and what is written into it while a command runs.

    folder.py      one run per folder: refusals, the lock, leftovers, write errors named in one line
    checkpoint.py  checkpoints written atomically with a manifest, verified when read, the latest intact one
    tracking.py    metrics.jsonl, Accelerate trackers, the completions table, the saved config

Hands on paths and saved state to training/ and evaluation/.
"""
