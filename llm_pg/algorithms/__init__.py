"""The math, with no model, data or I/O: pure tensor functions and the table that names each algorithm.

    advantages.py       returns G_t, GAE, the REINFORCE baselines (none, moving average, leave-one-out, greedy),
                        GRPO's group scaling
    losses.py           policy-gradient, clipped-ratio (PPO / GRPO), value, entropy and KL losses
    kl.py               the KL coefficient beta (fixed or adaptive) and where the KL acts (reward or loss)
    preference_loss.py  the Bradley-Terry loss of a reward model and its pairwise accuracy
    registry.py         ALGORITHMS: name -> how advantages are formed and which loss is trained

Hands on (N, T) tensors and scalars to training/. Imports nothing above config/.
"""


def __getattr__(name):  # the names of llm_pg 0.1's algorithms.py, for one release
    from llm_pg import moved_attribute

    return moved_attribute("algorithms", name)
