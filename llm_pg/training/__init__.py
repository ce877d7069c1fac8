"""The trainers: the RL loop and its stages, SFT, and reward-model training.

    setup.py             what every trainer starts with: precision, Accelerator, threads, seed, AdamW + schedule, config
    rl.py                the RL loop: set-up, train_step (sample -> reward -> advantage -> update), checkpoints
    scoring.py           a rollout's rewards, the KL to the reference, advantages and returns -> ScoredRollout
    dynamic_sampling.py  DAPO's dynamic sampling: GroupFilter, driven round by round by the loop, drops groups
                         with equal rewards and refills the batch (one round, passed on, when it is off)
    update.py            epochs x minibatches x micro-batches of gradient steps -> the step's statistics
    run_end.py           the final policy (best or last), saved, then report and Hub push
    sft.py               supervised warm start on the references
    reward_model.py      `llm-pg rm`: a Bradley-Terry reward model on preference pairs, saved for `type: reward_model`
    dpo.py               `llm-pg dpo`: direct preference optimization of the policy on the same pairs

Hands on run folders (final/, metrics, checkpoints) to evaluation/, reporting/ and pipelines/.
"""
