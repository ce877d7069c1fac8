"""Reward from a model trained by `llm-pg rm`: r(prompt, completion), read the way the model was trained to read.

The text scored is join_answer(prompt, completion) (llm_pg/data/preferences.py), the same join the model trained
on. The prompt is the policy's prompt text as the trainer gives it to every reward, which is the text the reward
model trained on when both render conversations alike (the same chat template, or plain text on both sides).
With `messages_column`, the conversation in that record field is rendered with the reward model's own saved
rendering instead (its chat template or plain transcript, its system prompt), whatever the policy's prompt looks
like. With `normalize`, the score is (r - mean) / std with the mean and std of the training pairs' scores saved
beside the weights (rm_settings.json), so rewards from different reward models share a scale.

Why not `type: classifier`: it reads transformers' own pooling (the last token that is not the pad id, wrong
when pad == eos ends a text), knows no rendering and no normalization statistics.
"""

from __future__ import annotations

from llm_pg.data.chat import check_messages
from llm_pg.data.preferences import Rendering, join_answer
from llm_pg.errors import ConfigError
from llm_pg.models.locate import load_error, pick_device, resolve_model_folder


class PreferenceReward:
    """score = r(prompt + completion), optionally (r - mean) / std; see the module docstring."""

    def __init__(self, model: str, normalize: bool = True, messages_column: str | None = None, batch_size: int = 16,
                 device: str | None = None, key: str = "reward.reward_model"):
        from llm_pg.models import reward_model as rm_model
        path = resolve_model_folder(model, f"{key}.model")
        settings = rm_model.read_settings(path, f"{key}.model")
        try:
            self.tokenizer = rm_model.load_tokenizer(path, key=f"{key}.model")
            self.model = rm_model.load_model(path, None, self.tokenizer.pad_token_id, key=f"{key}.model")
        except Exception as e:  # a damaged folder
            raise load_error(f"{key}.model", model, e) from None
        self.model.eval().requires_grad_(False)
        self.rendering = Rendering(**settings["rendering"])
        self.max_length = settings["max_length"]
        stats = settings["normalization"]
        self.mean, self.std = (stats["mean"], max(stats["std"], 1e-8)) if normalize else (0.0, 1.0)
        self.messages_column, self.batch_size, self.key = messages_column, batch_size, key
        self.device = pick_device(device)
        self.model.to(self.device)
        self.signature = f"reward_model:{model}|normalize:{normalize}|messages:{messages_column}"

    def texts(self, prompts, completions, columns: dict) -> list[str]:
        """What the reward model reads for each completion."""
        if self.messages_column is None:
            return [join_answer(p, c) for p, c in zip(prompts, completions)]
        if self.messages_column not in columns:
            raise ConfigError(f"{self.key}.messages_column: the records have no field '{self.messages_column}' "
                              f"(fields: {sorted(columns)})")
        conversations = columns[self.messages_column]
        return [self.rendering.text(self.tokenizer, check_messages(m, f"{self.key}.messages_column: sample {i}"), c)
                for i, (m, c) in enumerate(zip(conversations, completions))]

    def __call__(self, prompts, completions, references, **columns) -> list[float]:
        from llm_pg.models import reward_model as rm_model
        ids = rm_model.encode(self.tokenizer, self.texts(prompts, completions, columns), self.max_length)
        scores = rm_model.score_ids(self.model, ids, self.tokenizer.pad_token_id, self.batch_size, self.device)
        return [(s - self.mean) / self.std for s in scores]
