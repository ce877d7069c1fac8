"""Reference metrics as rewards: sentence BLEU, chrF / chrF++ (sacrebleu) and ROUGE-1/2/L/Lsum F1 (rouge-score).

Each metric scores a batch, `metric(prompts, completions, references, **columns) -> list[float]` in [0, 1], with
every reference of a sample, and scores all prefixes of one completion with `prefix_scores(prefixes, references)`
incrementally, for per-token credit (token_credit.py): its statistics are updated by the n-grams that the prefix
adds or removes instead of being recomputed from the whole text.
"""

from __future__ import annotations

import functools
import logging
from collections import Counter
from importlib.metadata import version
from typing import Sequence

from rouge_score import rouge_scorer, scoring
from rouge_score import tokenize as rouge_tokenize
from sacrebleu.metrics import BLEU, CHRF
from sacrebleu.metrics.helpers import extract_all_char_ngrams, extract_all_word_ngrams

logging.getLogger("absl").setLevel(logging.WARNING)  # rouge-score logs "Using default tokenizer." per scorer


def common_prefix_length(a: Sequence, b: Sequence) -> int:
    """Length of the longest common prefix; slices compare in C, so a grown sequence costs one comparison."""
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    lo, hi = 0, n  # invariant: a[:lo] == b[:lo], a[:hi] != b[:hi]
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if a[:mid] == b[:mid] else (lo, mid)
    return lo


class IncrementalNgrams:
    """Hypothesis n-gram counts, and their clipped matches against fixed references, for an edited sequence.

    `update(units)` compares the new unit sequence (a tuple of words or a str of characters: its slices are the
    n-gram keys) with the previous one and removes or adds
    only the n-grams that touch the part after their common prefix. matches[r][n-1] = sum_g min(c_hyp(g), c_r(g))
    over the n-grams g of order n; totals[n-1] = number of hypothesis n-grams of order n.
    """

    def __init__(self, max_order: int, references: list[Counter]):
        self.max_order, self.references = max_order, references
        self.units: Sequence = ()
        self.counts: Counter = Counter()
        self.totals = [0] * max_order
        self.matches = [[0] * max_order for _ in references]

    def _add(self, gram, delta: int) -> None:
        before = self.counts[gram]
        after = self.counts[gram] = before + delta
        n = len(gram) - 1
        self.totals[n] += delta
        for r, reference in enumerate(self.references):
            in_reference = reference.get(gram, 0)
            if in_reference:
                self.matches[r][n] += min(after, in_reference) - min(before, in_reference)

    def update(self, units: Sequence) -> None:
        old, k = self.units, common_prefix_length(self.units, units)
        if k == len(old) == len(units):
            return
        for n in range(1, self.max_order + 1):
            for i in range(max(0, k - n + 1), len(old) - n + 1):  # n-grams that end in the changed tail
                self._add(old[i:i + n], -1)
            for i in range(max(0, k - n + 1), len(units) - n + 1):
                self._add(units[i:i + n], +1)
        self.units = units


def _word_ngrams(words: Sequence[str], max_order: int) -> Counter:
    return Counter(tuple(words[i:i + n]) for n in range(1, max_order + 1) for i in range(len(words) - n + 1))


class SentenceBLEU:
    """Sentence BLEU / 100 (sacrebleu with effective order, as sacrebleu.sentence_bleu), all references at once.

    Clipped to 1: sacrebleu scores an exact match 100.00000000000004 (exp of a sum of logs).
    """

    def __init__(self, smooth_method: str = "exp", smooth_value: float | None = None, tokenize: str = "13a",
                 lowercase: bool = False):
        self.metric = BLEU(lowercase=lowercase, tokenize=tokenize, smooth_method=smooth_method,
                           smooth_value=smooth_value, effective_order=True)
        self.metric.num_refs = -1  # the signature then reads nrefs:var (samples differ in reference count)
        self.signature = str(self.metric.get_signature())
        self._chunks: dict[str, tuple] = {}

    def tokens(self, text: str) -> tuple:
        """sacrebleu's tokens of a hypothesis, space-separated chunk by chunk (cached) where that is exact.

        As sacrebleu, the text is lowercased (option) and right-stripped whole; then 13a, whose patterns look one
        character around a space and never span one, and none/char give the chunks between spaces the tokens they
        have in the whole text. Other tokenizers see it all.
        """
        m = self.metric
        if m.tokenizer.signature() not in ("13a", "none", "char"):
            return tuple(m._preprocess_segment(text).split())
        out: tuple = ()
        for chunk in (text.lower() if m.lowercase else text).rstrip().split(" "):
            if chunk not in self._chunks:
                if len(self._chunks) > 100_000:
                    self._chunks.clear()
                self._chunks[chunk] = tuple(m.tokenizer(chunk).split())
            out += self._chunks[chunk]
        return out

    def __call__(self, prompts, completions, references, **columns) -> list[float]:
        return [min(1.0, self.metric.sentence_score(c, list(refs)).score / 100.0)
                for c, refs in zip(completions, references)]

    def _from_stats(self, state: IncrementalNgrams, ref_lens: list[int]) -> float:
        m = self.metric
        hyp_len = len(state.units)
        ref_len = m._get_closest_ref_len(hyp_len, ref_lens)
        score = BLEU.compute_bleu(list(state.matches[0]), list(state.totals), hyp_len, ref_len, m.smooth_method,
                                  m.smooth_value, m.effective_order, m.max_ngram_order).score
        return min(1.0, score / 100.0)

    def prefix_scores(self, prefixes: Sequence[str], references: Sequence[str], **context) -> list[float]:
        m, merged, ref_lens = self.metric, Counter(), []
        for ref in references:  # sacrebleu keeps, per n-gram, its highest count in any reference
            grams, length = extract_all_word_ngrams(m._preprocess_segment(ref), 1, m.max_ngram_order)
            ref_lens.append(length)
            for gram, count in grams.items():
                merged[gram] = max(merged[gram], count)
        state = IncrementalNgrams(m.max_ngram_order, [merged])
        scores: list[float] = []
        for i, prefix in enumerate(prefixes):
            if i and prefix == prefixes[i - 1]:  # a token that does not change the text (EOS, a stripped space)
                scores.append(scores[-1])
                continue
            state.update(self.tokens(prefix))
            scores.append(self._from_stats(state, ref_lens))
        return scores


class SentenceCHRF:
    """chrF (word_order 0) or chrF++ (word_order 2) / 100 with sacrebleu; the best-scoring reference counts."""

    def __init__(self, char_order: int = 6, word_order: int = 0, beta: int = 2, lowercase: bool = False,
                 whitespace: bool = False, eps_smoothing: bool = False):
        self.metric = CHRF(char_order=char_order, word_order=word_order, beta=beta, lowercase=lowercase,
                           whitespace=whitespace, eps_smoothing=eps_smoothing)
        self.metric.num_refs = -1
        self.signature = str(self.metric.get_signature())

    def __call__(self, prompts, completions, references, **columns) -> list[float]:
        return [self.metric.sentence_score(c, list(refs)).score / 100.0 for c, refs in zip(completions, references)]

    def _chars(self, text: str) -> str:
        return text if self.metric.whitespace else "".join(text.split())

    def prefix_scores(self, prefixes: Sequence[str], references: Sequence[str], **context) -> list[float]:
        m = self.metric
        refs = [m._preprocess_segment(r) for r in references]
        char_refs = [Counter({g: c for counter in extract_all_char_ngrams(r, m.char_order, m.whitespace)
                              for g, c in counter.items()}) for r in refs]
        word_refs = [_word_ngrams(tuple(m._remove_punctuation(r)), m.word_order) for r in refs]
        # per reference and order: how many n-grams it has (sacrebleu counts no hypothesis n-grams where it has 0)
        ref_totals = [[sum(c for g, c in ref.items() if len(g) == n) for n in range(1, order + 1)]
                      for refs_, order in ((char_refs, m.char_order), (word_refs, m.word_order)) for ref in refs_]
        chars = IncrementalNgrams(m.char_order, char_refs)
        words = IncrementalNgrams(m.word_order, word_refs)
        scores: list[float] = []
        for i, prefix in enumerate(prefixes):
            if i and prefix == prefixes[i - 1]:
                scores.append(scores[-1])
                continue
            text = m._preprocess_segment(prefix)
            chars.update(self._chars(text))
            if m.word_order:
                words.update(tuple(m._remove_punctuation(text)))
            best_stats, best_f = [], -1.0
            for r in range(len(refs)):
                stats = []
                for state, totals in ((chars, ref_totals[r]), (words, ref_totals[len(refs) + r])):
                    for n in range(state.max_order):
                        stats += [state.totals[n] if totals[n] else 0, totals[n], state.matches[r][n]]
                f = m._compute_f_score(stats)
                if f > best_f:
                    best_f, best_stats = f, stats
            scores.append(m._compute_f_score(best_stats) / 100.0)
        return scores


@functools.lru_cache(maxsize=100_000)
def _stem(word: str) -> str:
    return _STEMMER.stem(word) if len(word) > 3 else word  # rouge-score stems only words longer than 3 letters


_STEMMER = rouge_scorer.tokenizers.DefaultTokenizer(use_stemmer=True)._stemmer


class SentenceROUGE:
    """ROUGE-1/2/L/Lsum F1 (rouge-score); with several references the best one counts (score_multi)."""

    def __init__(self, kind: str, use_stemmer: bool = True):
        self.kind, self.use_stemmer = kind, use_stemmer
        self._scorer = None
        stemmer = "yes" if use_stemmer else "no"
        self.signature = f"rouge-score:{version('rouge-score')}|{kind}|fmeasure|stemmer:{stemmer}"
        self._chunks: dict[str, tuple] = {}

    @property
    def scorer(self) -> rouge_scorer.RougeScorer:
        if self._scorer is None:  # built on first use: importing llm_pg.rewards stays cheap
            self._scorer = rouge_scorer.RougeScorer([self.kind], use_stemmer=self.use_stemmer)
        return self._scorer

    def __call__(self, prompts, completions, references, **columns) -> list[float]:
        if self.kind == "rougeLsum":
            return [self.scorer.score_multi(list(refs), c)[self.kind].fmeasure
                    for c, refs in zip(completions, references)]
        # rouge-score's own scoring on cached tokens: stemming every word of every text again is most of the cost
        return [max(self._score(self.tokens(r), self.tokens(c)) for r in refs) for c, refs in zip(completions,
                                                                                                  references)]

    def _score(self, target: tuple, prediction: tuple) -> float:
        """F1 of one reference, as RougeScorer.score computes it from the two token lists."""
        if self.kind == "rougeL":
            return rouge_scorer._score_lcs(target, prediction).fmeasure
        n = int(self.kind[5:])
        return rouge_scorer._score_ngrams(rouge_scorer._create_ngrams(target, n),
                                          rouge_scorer._create_ngrams(prediction, n)).fmeasure

    def tokens(self, text: str) -> tuple:
        """rouge-score's tokens (lowercase [a-z0-9]+ words, stemmed), space-separated chunk by chunk, cached.

        A space is a separator for rouge-score too, so the chunks' tokens are the text's tokens.
        """
        out: tuple = ()
        for chunk in text.split(" "):
            if chunk not in self._chunks:
                if len(self._chunks) > 100_000:
                    self._chunks.clear()
                words = rouge_tokenize.tokenize(chunk, None)
                self._chunks[chunk] = tuple(_stem(w) for w in words) if self.use_stemmer else tuple(words)
            out += self._chunks[chunk]
        return out

    def prefix_scores(self, prefixes: Sequence[str], references: Sequence[str], **context) -> list[float]:
        if self.kind == "rougeLsum":
            return self._lsum_prefix_scores(prefixes, references)
        refs = [self.tokens(r) for r in references]
        state = _LCS(refs) if self.kind == "rougeL" else None
        n = 0 if state else int(self.kind[5:])
        grams = None if state else IncrementalNgrams(n, [Counter(tuple(r[i:i + n]) for i in range(len(r) - n + 1))
                                                        for r in refs])
        scores: list[float] = []
        for i, prefix in enumerate(prefixes):
            if i and prefix == prefixes[i - 1]:
                scores.append(scores[-1])
                continue
            hyp = self.tokens(prefix)
            if state is not None:
                state.update(hyp)
                values = [_f1(lcs, len(hyp), len(ref)) if hyp and ref else 0.0 for lcs, ref in zip(state.lcs(), refs)]
            else:
                grams.update(hyp)
                hyp_total = grams.totals[n - 1]
                values = [_f1(matches[n - 1], max(hyp_total, 1), max(len(ref) - n + 1, 1))
                          for matches, ref in zip(grams.matches, refs)]
            scores.append(max(values))
        return scores


    def sentences(self, text: str) -> list[tuple]:
        """rouge-score's ROUGE-Lsum sentences (the non-empty lines), each as its tokens."""
        return [self.tokens(line) for line in text.split("\n") if line]

    def _lsum_prefix_scores(self, prefixes: Sequence[str], references: Sequence[str]) -> list[float]:
        """ROUGE-Lsum of every prefix: only the last (growing) sentence's LCS rows are computed per prefix.

        Summary-level LCS (Lin 2004, section 3.2, as rouge-score 1.5.5): for each reference sentence the union of
        its LCS positions with every hypothesis sentence, hits clipped by token counts. The finished sentences'
        LCS positions are cached; the last sentence's DP rows grow with its tokens (_LCS).
        """
        refs = [self.sentences(r) for r in references]  # per reference: its sentences' tokens
        finished: dict[tuple, list[list[list[int]]]] = {}  # sentence -> per reference, per sentence: LCS positions
        last = [_LCS(ref) for ref in refs]
        scores: list[float] = []
        for i, prefix in enumerate(prefixes):
            if i and prefix == prefixes[i - 1]:
                scores.append(scores[-1])
                continue
            hyp = self.sentences(prefix)
            for sentence in hyp[:-1]:
                if sentence not in finished:
                    finished[sentence] = [[rouge_scorer.lcs_ind(r, sentence) for r in ref] for ref in refs]
            values = []
            for k, ref in enumerate(refs):
                if not hyp:
                    values.append(0.0)
                    continue
                last[k].update(hyp[-1])
                positions = [finished[sentence][k] for sentence in hyp[:-1]] + [last[k].positions()]
                values.append(_summary_lcs_f1(ref, hyp, positions))
            scores.append(max(values))
        return scores


def _summary_lcs_f1(ref: list[tuple], hyp: list[tuple], positions: list[list[list[int]]]) -> float:
    """rouge-score's _summary_level_lcs F1, given positions[h][r]: an LCS of ref[r] and hyp[h] (indices in ref[r])."""
    m, n = sum(map(len, ref)), sum(map(len, hyp))
    if not ref or not m or not n:
        return 0.0
    ref_counts, hyp_counts = Counter(t for s in ref for t in s), Counter(t for s in hyp for t in s)
    hits = 0
    for r, sentence in enumerate(ref):
        for t in (sentence[i] for i in sorted(set().union(*(p[r] for p in positions)))):
            if hyp_counts[t] > 0 and ref_counts[t] > 0:  # each token counted at most as often as it occurs
                hits += 1
                hyp_counts[t] -= 1
                ref_counts[t] -= 1
    return scoring.fmeasure(hits / n, hits / m)


def _f1(overlap: int, hyp_count: int, ref_count: int) -> float:
    return scoring.fmeasure(overlap / hyp_count, overlap / ref_count)


class _LCS:
    """LCS length of a growing hypothesis with each reference: one dynamic-programming row per hypothesis token.

    rows[r][j][i] = LCS(hyp[:j], ref_r[:i]); an edited tail recomputes only the rows after the common prefix.
    """

    def __init__(self, references: list[tuple]):
        self.references = references
        self.hyp: tuple = ()
        self.rows = [[[0] * (len(ref) + 1)] for ref in references]

    def update(self, hyp: tuple) -> None:
        k = common_prefix_length(self.hyp, hyp)
        for ref, rows in zip(self.references, self.rows):
            del rows[k + 1:]
            for token in hyp[k:]:
                above, row = rows[-1], [0]
                for i, ref_token in enumerate(ref, 1):
                    row.append(above[i - 1] + 1 if ref_token == token else max(above[i], row[i - 1]))
                rows.append(row)
        self.hyp = hyp

    def lcs(self) -> list[int]:
        return [rows[-1][-1] for rows in self.rows]

    def positions(self) -> list[list[int]]:
        """Per reference: the indices in it of one LCS with the hypothesis, the one rouge-score's lcs_ind reads out."""
        out = []
        for ref, rows in zip(self.references, self.rows):
            i, j, found = len(ref), len(self.hyp), []
            while i > 0 and j > 0:  # rouge_scorer._backtrack_norec, with t[i][j] = rows[j][i]
                if ref[i - 1] == self.hyp[j - 1]:
                    found.append(i - 1)
                    i, j = i - 1, j - 1
                elif rows[j - 1][i] > rows[j][i - 1]:
                    j -= 1
                else:
                    i -= 1
            out.append(found[::-1])
        return out


def build_metric(kind: str, **options):
    """The metric reward of a component type with its options (see spec.OPTIONS)."""
    if kind == "bleu":
        return SentenceBLEU(**options)
    if kind in ("chrf", "chrf++"):
        return SentenceCHRF(**{"word_order": 2 if kind == "chrf++" else 0, **options})
    return SentenceROUGE(kind, **options)


METRIC_TYPES = ("bleu", "chrf", "chrf++", "rouge1", "rouge2", "rougeL", "rougeLsum")
