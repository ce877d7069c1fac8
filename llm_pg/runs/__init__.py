"""The run folder and what is written into it while a command runs.

    folder.py      one run per folder: refusals, the lock, leftovers, write errors named in one line
    marker.py      the folder's kind marker: which command's run it holds
    checkpoint.py  checkpoints written atomically with a manifest, verified when read, the latest intact one
    resume.py      --resume: the config history (config_history.jsonl), a resumed config checked against it
    tracking.py    metrics.jsonl, Accelerate trackers, the completions table, the saved config
    stop.py        SIGINT/SIGTERM: finish the step, checkpoint, exit
    rng.py         one seed for every process, then a random stream of its own; saved in a checkpoint
    digests.py     sha256 of what a run reads and writes, which `--resume` and the pipeline compare

Hands on paths and saved state to training/ and evaluation/.
"""
