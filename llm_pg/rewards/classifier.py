"""Classifier reward: one label's probability, logit or log-probability under any sequence classifier."""

from __future__ import annotations

import torch

from llm_pg.errors import ConfigError
from llm_pg.models.locate import load_error, pick_device, resolve_model_folder


class ClassifierReward:
    """score(text) = p(label | text), its logit, or log p(label | text), from an AutoModelForSequenceClassification.

    The classifier runs on its own device in batches of `batch_size` texts sorted by length (less padding). A
    one-output head (regression or a binary logit) uses sigmoid / log-sigmoid for probability / logprob.
    """

    def __init__(self, model: str, label: int | str | None = None, output: str = "probability",
                 input: str = "completion", batch_size: int = 32, device: str | None = None, max_length: int = 512,
                 revision: str | None = None, trust_remote_code: bool = False, key: str = "reward.classifier"):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        path = resolve_model_folder(model, f"{key}.model")
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path, revision=revision, trust_remote_code=trust_remote_code)
            self.model = AutoModelForSequenceClassification.from_pretrained(
                path, revision=revision, trust_remote_code=trust_remote_code).eval().requires_grad_(False)
        except (OSError, ValueError) as e:
            raise load_error(f"{key}.model", model, e) from None
        if self.tokenizer.pad_token is None:  # e.g. GPT-2 classifiers: pad with EOS; the model finds the last token
            self.tokenizer.pad_token = self.tokenizer.eos_token
        if self.model.config.pad_token_id is None:
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.tokenizer.padding_side = "right"
        self.label = self._label_index(label, f"{key}.label")
        self.output, self.input, self.batch_size, self.max_length = output, input, batch_size, max_length
        self.device = pick_device(device)
        self.model.to(self.device)
        self.signature = f"classifier:{model}|label:{self.label}|{output}|input:{input}"

    def _label_index(self, label: int | str | None, key: str) -> int:
        labels = self.model.config.id2label or {}
        n = self.model.config.num_labels
        if label is None:
            if n == 1:
                return 0
            raise ConfigError(f"{key}: the classifier has {n} labels {sorted(labels.values())}; choose one by name "
                              "or index")
        if isinstance(label, str):
            by_name = {v: k for k, v in labels.items()}
            if label not in by_name:
                raise ConfigError(f"{key}: '{label}' is not a label of the classifier {sorted(by_name)}")
            return int(by_name[label])
        if not 0 <= label < n:
            raise ConfigError(f"{key}: index {label} is out of range for a classifier with {n} labels")
        return label

    def _inputs(self, prompts, completions) -> tuple[list[str], list[str] | None]:
        if self.input == "completion":
            return list(completions), None
        if self.input == "prompt_completion":
            return [p + c for p, c in zip(prompts, completions)], None
        return list(prompts), list(completions)

    @torch.no_grad()
    def __call__(self, prompts, completions, references, **columns) -> list[float]:
        first, second = self._inputs(prompts, completions)
        order = sorted(range(len(first)), key=lambda i: len(first[i]) + len(second[i] if second else ""))
        values = [0.0] * len(first)
        for start in range(0, len(order), self.batch_size):
            chunk = order[start:start + self.batch_size]
            batch = self.tokenizer([first[i] for i in chunk], [second[i] for i in chunk] if second else None,
                                   padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
            logits = self.model(**batch.to(self.device)).logits.float()  # (b, labels)
            for i, value in zip(chunk, self._select(logits).tolist()):
                values[i] = value
        return values

    def _select(self, logits: torch.Tensor) -> torch.Tensor:
        """(b, labels) logits -> (b,) chosen output of the chosen label."""
        z = logits[:, self.label]
        if self.output == "logit":
            return z
        one = logits.shape[1] == 1
        if self.output == "probability":
            return torch.sigmoid(z) if one else logits.softmax(-1)[:, self.label]
        return torch.nn.functional.logsigmoid(z) if one else logits.log_softmax(-1)[:, self.label]
