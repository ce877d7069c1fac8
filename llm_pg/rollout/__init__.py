"""The rollout stage: K completions per prompt, sampled from the policy, with their log-probs.

    sampling.py     sample() -> Rollout (prompt and completion ids, masks, the sampler's log-probs);
                    completion_outputs(): the trainer's log-probs, entropy and values of given completions
    chunked_head.py the LM head run in chunks after the trunk (training.logits_chunk_tokens): no (N, T, V) logits
    decoding.py     llm_pg's own decoding loop: one forward per token with the KV cache, an inverse-CDF draw
    hf_decoding.py  the same contract through transformers' generate() (generation.backend: hf)
    rows.py         per_row: how each field of Rollout (and RolloutRewards) is selected by row and concatenated
    reference.py    the frozen reference policy that the KL penalty and perplexity are measured against

Hands on a Rollout to the reward and scoring stages (training/scoring.py).
"""


def __getattr__(name):  # the names of llm_pg 0.1's rollout.py, for one release
    from llm_pg import moved_attribute

    return moved_attribute("rollout", name)
