"""Rewards equal sacrebleu / rouge-score on the same strings, multi-reference included."""

import re

import pytest
import sacrebleu
from rouge_score import rouge_scorer

from llm_pg.config.schema import RewardConfig
from llm_pg.errors import ConfigError
from llm_pg.evaluation.heldout import corpus_scores
from llm_pg.rewards import REWARDS, RewardMix

HYPS = ["Return the number of items in the queue.", "the cat sat on a mat", "", "Ça marche très bien — 東京"]
REFS = [["Return the size of the queue.", "Count the queued items."], ["the cat is on the mat"],
        ["anything"], ["ça marche bien", "東京 is big"]]


def test_sentence_bleu_equals_sacrebleu():
    got = REWARDS["bleu"]([""] * 4, HYPS, REFS)
    want = [sacrebleu.sentence_bleu(h, r).score / 100 for h, r in zip(HYPS, REFS)]
    assert got == pytest.approx(want, abs=1e-12)
    assert got[0] > 0 and 0 <= min(got) and max(got) <= 1


@pytest.mark.parametrize("kind", ["rouge1", "rouge2", "rougeL"])
def test_rouge_equals_rouge_score_best_reference(kind):
    scorer = rouge_scorer.RougeScorer([kind], use_stemmer=True)
    got = REWARDS[kind]([""] * 4, HYPS, REFS)
    want = [max(scorer.score(ref, h)[kind].fmeasure for ref in refs) for h, refs in zip(HYPS, REFS)]
    assert got == pytest.approx(want, abs=1e-12)


def test_rougeL_hand_value():
    # LCS("the cat sat on a mat", "the cat is on the mat") = the cat on mat = 4; P = 4/6, R = 4/6
    assert REWARDS["rougeL"]([""], ["the cat sat on a mat"], [["the cat is on the mat"]])[0] == pytest.approx(4 / 6)


def test_reward_model_mixes_by_weight_and_reports_components():
    model = RewardMix.from_config(RewardConfig(components=[{"name": "rougeL", "weight": 0.5}, {"name": "bleu", "weight": 2.0}]))
    total, parts = model([""] * 4, HYPS, REFS)
    assert set(parts) == {"rougeL", "bleu"}
    for i in range(4):
        assert total[i] == pytest.approx(0.5 * parts["rougeL"][i] + 2.0 * parts["bleu"][i])


def test_reward_model_rejects_unknown_options():
    with pytest.raises(ConfigError, match=r"reward.components\[0\]"):
        RewardMix.from_config(RewardConfig(components=[{"name": "rougeL", "wieght": 1.0}]))


def test_corpus_scores_equal_sacrebleu_corpus_bleu_with_ragged_references():
    scores = corpus_scores(HYPS, REFS)
    # sacrebleu wants one stream per reference position; short lists repeat their first reference
    streams = [[r[0] for r in REFS], [r[1] if len(r) > 1 else r[0] for r in REFS]]
    assert scores["bleu"] == pytest.approx(sacrebleu.corpus_bleu(HYPS, streams).score / 100)
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    want = sum(scorer.score_multi(r, h)["rougeL"].fmeasure for h, r in zip(HYPS, REFS)) / 4
    assert scores["rougeL"] == pytest.approx(want)
    assert scores["num_samples"] == 4 and scores["bleu_signature"].startswith("nrefs:2")


# ---------------------------------------------------------------------------------- every metric and its options

import math  # noqa: E402

from hypothesis import HealthCheck, example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from llm_pg.rewards import OPTIONS, RewardError  # noqa: E402
from llm_pg.rewards.metrics import SentenceROUGE, build_metric  # noqa: E402

LONG = " ".join(["the cat sat on the mat and looked at the dog"] * 400)  # 4,400 words
BAD_INPUT = [("", ["a reference"]), ("a completion", [""]), ("", [""]), ("Ça marche très bien — 東京 ✓ مرحبا", [
    "ça marche bien", "東京 is big", "مرحبا بالعالم"]), ("naïve café\tcrème\n brûlée", ["naive cafe creme brulee"]),
    (LONG, [LONG[:5000], "the cat"])]


def sacrebleu_value(kind: str, options: dict, hyp: str, refs: list[str]) -> float:
    """The library's own answer for a metric type with its options."""
    if kind == "bleu":
        return min(1.0, sacrebleu.sentence_bleu(hyp, refs, **{
            "use_effective_order": True, **{k: v for k, v in options.items()}}).score / 100)
    if kind in ("chrf", "chrf++"):
        metric = sacrebleu.metrics.CHRF(**{"word_order": 2 if kind == "chrf++" else 0, **options})
        return metric.sentence_score(hyp, refs).score / 100
    scorer = rouge_scorer.RougeScorer([kind], use_stemmer=options.get("use_stemmer", True))
    return max(scorer.score(ref, hyp)[kind].fmeasure for ref in refs)


METRIC_CASES = [
    ("bleu", {}), ("bleu", {"smooth_method": "floor", "smooth_value": 0.1}), ("bleu", {"smooth_method": "add-k"}),
    ("bleu", {"smooth_method": "none", "tokenize": "intl", "lowercase": True}), ("bleu", {"tokenize": "char"}),
    ("chrf", {}), ("chrf++", {}), ("chrf", {"lowercase": True, "whitespace": True, "beta": 1}),
    ("chrf++", {"word_order": 2, "eps_smoothing": True, "char_order": 4}),
    ("rouge1", {}), ("rouge2", {}), ("rougeL", {}), ("rougeLsum", {}), ("rougeL", {"use_stemmer": False}),
]


@pytest.mark.parametrize("kind,options", METRIC_CASES)
def test_every_metric_and_option_equals_its_library_multi_reference_and_bad_input(kind, options):
    hyps = HYPS + [h for h, _ in BAD_INPUT] + ["line one.\nthe cat sat\non a mat"]
    refs = REFS + [r for _, r in BAD_INPUT] + [["the cat sat.\nline one", "a mat"]]
    got = build_metric(kind, **options)([""] * len(hyps), hyps, refs)
    want = [sacrebleu_value(kind, options, h, r) for h, r in zip(hyps, refs)]
    assert got == pytest.approx(want, abs=1e-12)
    assert all(math.isfinite(v) and 0.0 <= v <= 1.0 for v in got)


def test_chrf_hand_value():
    # "ab" vs "ab": every char n-gram of orders 1-2 matches (P = R = 1); orders 3-6 exist in neither -> chrF = 1
    assert build_metric("chrf")([""], ["ab"], [["ab"]]) == [1.0]
    # "ab" vs "ac": 1-grams P = R = 1/2, 2-grams P = R = 0 -> avg P = avg R = 1/4 -> F_beta = 1/4
    assert build_metric("chrf")([""], ["ab"], [["ac"]])[0] == pytest.approx(0.25)


def test_bleu_records_the_sacrebleu_signature():
    model = RewardMix.from_config(RewardConfig(components=[{"name": "bleu", "smooth_method": "floor", "lowercase": True},
                                     {"name": "c", "type": "chrf++"}, {"name": "rougeLsum"}]))
    version = sacrebleu.__version__
    assert model.signatures["bleu"] == f"nrefs:var|case:lc|eff:yes|tok:13a|smooth:floor[0.10]|version:{version}"
    assert model.signatures["c"].startswith("nrefs:var|case:mixed|eff:yes|nc:6|nw:2")
    assert model.signatures["rougeLsum"].endswith("rougeLsum|fmeasure|stemmer:yes")


# Prefix scores (the per-token credit's M(prefix)) must equal the libraries on every prefix, however text grows or
# is edited between prefixes (a byte-level token can turn "\ufffd" into a character, a stop string can cut text).
PIECES = list("abc xyz.,!-'\n\tÇé東京ΣΑ5&;<>") + ["the ", "cat ", "mat.", "runs", "ran", "\ufffd", "&quot;", "<skipped>",
                                                  "-\n", "3.5", "  "]
TEXT = st.lists(st.sampled_from(PIECES), max_size=30).map("".join) | st.text(max_size=20)
PROPERTY = settings(max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.parametrize("kind,options", METRIC_CASES)
@PROPERTY
@given(text=TEXT, edits=st.lists(TEXT, max_size=3), refs=st.lists(TEXT, min_size=1, max_size=3))
@example(text="-\n a", edits=[], refs=["a"])  # 13a deletes "-\n" only where the whole text is not stripped there
def test_incremental_prefix_scores_equal_the_library_on_every_prefix(kind, options, text, edits, refs):
    prefixes = [text[:i] for i in range(len(text) + 1)] + edits + [text]
    metric = build_metric(kind, **options)
    got = metric.prefix_scores(prefixes, refs)
    want = [sacrebleu_value(kind, options, p, refs) for p in prefixes]
    assert got == pytest.approx(want, abs=1e-12)


def test_rouge_lsum_prefix_scores_are_incremental(monkeypatch):
    """Only the last sentence's LCS is recomputed per prefix: finished sentences are aligned once, not re-scored."""
    from rouge_score import rouge_scorer as library

    text = "the cat sat.\non the mat\nand the dog ran away\nthe end"
    refs = ["the cat sat on the mat.\nthe dog ran", "a dog ran\naway"]
    prefixes = [text[:i] for i in range(len(text) + 1)]
    want = [sacrebleu_value("rougeLsum", {}, p, refs) for p in prefixes]
    metric = build_metric("rougeLsum")
    calls = []
    real_lcs_ind = library.lcs_ind
    monkeypatch.setattr(library, "lcs_ind", lambda ref, can: calls.append(can) or real_lcs_ind(ref, can))
    monkeypatch.setattr(SentenceROUGE, "scorer", property(lambda self: pytest.fail("re-scored a prefix")))
    assert metric.prefix_scores(prefixes, refs) == pytest.approx(want, abs=1e-12)
    # 3 finished sentences x (2 + 2 reference sentences), each aligned once
    assert len(calls) == 3 * 4 and len(set(calls)) == 3


# ---------------------------------------------------------------------------------- configuration errors


@pytest.mark.parametrize("components,needle", [
    ([{"name": "bleu", "smooth_method": "magic"}], r"reward.components\[0\].smooth_method: 'magic' is not one of"),
    ([{"name": "rougeL"}, {"name": "classifier", "model": "x", "label": 1.5}], r"reward.components\[1\].label: "
                                                                               r"expected int or str"),
    ([{"name": "classifier"}], r"reward.components\[0\].model: required"),
    ([{"name": "evaluate"}], r"reward.components\[0\].module: required"),
    ([{"name": "chrf", "char_order": 0}], r"reward.components\[0\].char_order: must be >= 1"),
    ([{"name": "bleu", "lowercase": "yes"}], r"reward.components\[0\].lowercase: expected bool"),
    ([{"name": "rougeL", "weight": "high"}], r"reward.components\[0\].weight: expected a finite number"),
    ([{"name": "rougeL"}, {"name": "rougeL"}], r"reward.components\[1\].name: 'rougeL' is also"),
    ([{"name": "mean", "type": "bleu"}], r"reward.components\[0\].name: give a non-empty name other than"),
    ([{"name": "x", "type": "meteor"}], r"reward.components\[0\]: name \(or type\) must be one of"),
    ([{"name": "length_penalty", "n": 3}], r"reward.components\[0\]: unknown option\(s\) \['n'\]"),
    ([], r"reward.components: give at least one component"),
])
def test_component_errors_name_the_field(components, needle):
    with pytest.raises(ConfigError, match=needle):
        RewardMix.from_config(RewardConfig(components=components))


@pytest.mark.parametrize("override,needle", [
    ({"on_error": "ignore"}, "reward.on_error: 'ignore' is not one of"), ({"clip": [1.0, -1.0]}, "reward.clip: give"),
    ({"clip": [0.0]}, "reward.clip: give"), ({"error_penalty": float("nan")}, "reward.error_penalty"),
])
def test_reward_section_errors(override, needle):
    from llm_pg.config.schema import config_from_dict

    with pytest.raises(ConfigError, match=re.escape(needle)):
        config_from_dict({"model": {"name_or_path": "x"}, "reward": override})


def test_every_type_has_documented_options():
    for kind, options in OPTIONS.items():
        assert all(option.help for option in options.values()), kind


# ---------------------------------------------------------------------------------- shaping, mixing, normalization


def test_length_and_repetition_penalties_hand_values():
    model = RewardMix.from_config(RewardConfig(components=[
        {"name": "length_penalty", "target": 4}, {"name": "chars", "type": "length_penalty", "unit": "chars"},
        {"name": "repetition_penalty", "n": 2}]))
    completions = ["a b c d e f", "the cat the cat the cat", ""]
    _, parts = model([""] * 3, completions, [["x"]] * 3)
    assert parts["length_penalty"] == [-2 / 4, -2 / 4, -1.0]  # |6-4|/4, |6-4|/4, |0-4|/4
    assert parts["chars"] == [-11.0, -23.0, -0.0]
    # bigrams of "the cat the cat the cat": 5, distinct 2 ("the cat", "cat the") -> 3 repeats / 5
    assert parts["repetition_penalty"] == [0.0, -3 / 5, 0.0]


def test_weighted_mix_normalization_and_clipping():
    from llm_pg.config.schema import RewardConfig

    model = RewardMix.from_config(RewardConfig(components=[{"name": "rougeL", "weight": 2.0},
                                                             {"name": "length_penalty", "weight": 0.5}],
                                                 normalize=True, clip=[-1.0, 1.0]))
    hyps = ["the cat sat on a mat", "dog", "the cat is on the mat", "a b c d e f g h"]
    refs = [["the cat is on the mat"]] * 4
    first = model.reward_batch([""] * 4, hyps, refs)
    raw = [2.0 * r + 0.5 * lp for r, lp in zip(first.components["rougeL"], first.components["length_penalty"])]
    assert first.components["raw"] == pytest.approx(raw)
    mean = sum(raw) / 4
    std = math.sqrt(sum((r - mean) ** 2 for r in raw) / 4)
    assert first.rewards == pytest.approx([min(1.0, max(-1.0, (r - mean) / std)) for r in raw], abs=1e-6)
    assert min(first.rewards) == -1.0  # "a b c d e f g h" is clipped
    second = model.reward_batch([""] * 2, hyps[:2], refs[:2])  # statistics now cover all 6 rewards seen
    seen = raw + raw[:2]
    mean6 = sum(seen) / 6
    std6 = math.sqrt(sum((r - mean6) ** 2 for r in seen) / 6)
    assert second.rewards == pytest.approx([max(-1.0, min(1.0, (r - mean6) / std6)) for r in raw[:2]], abs=1e-6)

    restored = RewardMix.from_config(RewardConfig(components=[{"name": "rougeL"}], normalize=True))
    restored.load_state_dict(model.state_dict())
    assert restored.normalizer.state_dict() == model.normalizer.state_dict()
    assert model.normalizer.count == 6


def test_normalization_under_ddp_uses_every_process_rewards():
    """With a gather (accelerator.gather), each process's statistics equal one process's seeing both batches."""
    import torch

    from llm_pg.config.schema import RewardConfig

    def normalized_length():
        return RewardMix.from_config(RewardConfig(components=[{"name": "length_penalty"}], normalize=True))

    batches = [["a b", "a b c d"], ["a", "a b c d e f g"]]  # R_raw = -words: [-2, -4] and [-1, -7]
    raw = [torch.tensor([-float(len(c.split())) for c in batch], dtype=torch.float64) for batch in batches]

    def gather_on(rank):  # process `rank` holds raw[rank]; gather returns every process's, in process order
        def gather(mine):
            assert mine.tolist() == raw[rank].tolist()
            return torch.cat([mine if r == rank else raw[r] for r in range(2)])
        return gather

    one = normalized_length()
    alone = one.reward_batch([""] * 4, batches[0] + batches[1], [["x"]] * 4)
    for rank, batch in enumerate(batches):
        process = normalized_length()
        scored = process.reward_batch([""] * 2, batch, [["x"]] * 2, gather=gather_on(rank))
        assert process.normalizer.state_dict() == pytest.approx(one.normalizer.state_dict())
        assert scored.rewards == pytest.approx(alone.rewards[2 * rank:2 * rank + 2])
    assert one.normalizer.count == 4 and one.normalizer.mean == pytest.approx(-3.5)


# ---------------------------------------------------------------------------------- failing rewards


def failing(prompts, completions, references):
    return [1 / len(c) for c in completions]  # ZeroDivisionError on an empty completion


def not_finite(prompts, completions, references):
    return [float("inf") if c == "bad" else 0.5 for c in completions]


def test_a_failing_reward_names_itself_and_the_sample():
    model = RewardMix.from_config(RewardConfig(components=[{"name": "mine", "function": f"{__name__}:failing"}]))
    with pytest.raises(RewardError, match=r"^reward 'mine' failed: ZeroDivisionError: division by zero \(sample 2;"):
        model([""] * 3, ["ab", "c", "", "d"][:3], [["r"]] * 3)
    with pytest.raises(RewardError, match=r"reward 'inf' returned inf for sample 1; rewards must be finite"):
        RewardMix.from_config(RewardConfig(components=[{"name": "inf", "function": f"{__name__}:not_finite"}]))([""] * 2, ["ok", "bad"],
                                                                                         [["r"]] * 2)


def test_penalty_mode_gives_the_failing_samples_the_penalty_and_counts_them():
    from llm_pg.config.schema import RewardConfig

    config = RewardConfig(components=[{"name": "mine", "function": f"{__name__}:failing"},
                                      {"name": "inf", "function": f"{__name__}:not_finite"}, {"name": "rougeL"}],
                          on_error="penalty", error_penalty=-2.0)
    model = RewardMix.from_config(config)
    batch = model.reward_batch([""] * 3, ["ab", "", "bad"], [["ab"]] * 3)
    rewards, parts = batch.rewards, batch.components
    assert parts["mine"] == [0.5, -2.0, 1 / 3] and parts["inf"] == [0.5, 0.5, -2.0]
    assert parts["failed"] == [0.0, 1.0, 1.0]
    assert rewards[1] == pytest.approx(-2.0 + 0.5 + 0.0) and model.failed_total == 2


# ---------------------------------------------------------------------------------- callables and columns


def with_columns(prompts, completions, references, difficulty):
    return [float(d) for d in difficulty]


def with_kwargs(prompts, completions, references, **columns):
    return [float(len(columns))] * len(completions)


def test_callables_from_a_module_and_a_file_get_the_columns_they_ask_for(tmp_path):
    path = tmp_path / "my_rewards.py"
    path.write_text("def exclaim(prompts, completions, references):\n"
                    "    return [float(c.count('!')) for c in completions]\n")
    model = RewardMix.from_config(RewardConfig(components=[{"name": "file", "function": f"{path}:exclaim"},
                                     {"name": "named", "function": f"{__name__}:with_columns"},
                                     {"name": "kw", "function": f"{__name__}:with_kwargs"}]))
    _, parts = model(["p", "p"], ["hi!!", "no"], [["r"], ["r"]], difficulty=[3, 1], source=["a", "b"])
    assert parts == {"file": [2.0, 0.0], "named": [3.0, 1.0], "kw": [2.0, 2.0]}


def test_reward_inputs_repeat_each_example_k_times_with_its_columns():
    from llm_pg.data.prompts import Example
    from llm_pg.rewards import reward_inputs

    batch = [Example("a", "p1", [1], ["r1"], {"x": 1}), Example("b", "p2", [2], ["r2", "r3"], {"y": "z"})]
    prompts, references, columns = reward_inputs(batch, 2)
    assert prompts == ["p1", "p1", "p2", "p2"] and references == [["r1"], ["r1"], ["r2", "r3"], ["r2", "r3"]]
    assert columns == {"x": [1, 1, None, None], "y": [None, None, "z", "z"]}
