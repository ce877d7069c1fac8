"""Verifiable rewards (issue 27): answer extraction and comparison against hand-written expectations, the
verifier / format components through the config, and strict vs lenient accuracy in held-out evaluation."""

from __future__ import annotations

import re
from fractions import Fraction

import pytest

from llm_pg.config.schema import RewardConfig
from llm_pg.errors import ConfigError
from llm_pg.evaluation.heldout import score_generations, summarize
from llm_pg.evaluation.metrics import Generation
from llm_pg.rewards import RewardMix
from llm_pg.rewards.verifier import extract_answer, is_correct, normalize_text, parse_number, reference_answer


@pytest.mark.parametrize("text, value", [
    ("1,234", Fraction(1234)),
    ("It costs $1,234,567.", Fraction(1234567)),
    ("-3.5", Fraction(-7, 2)),
    ("+4", Fraction(4)),
    ("so x = -12.", Fraction(-12)),
    ("\u22127", Fraction(-7)),                       # Unicode minus
    ("3/4", Fraction(3, 4)),
    ("-3/4 of it", Fraction(-3, 4)),
    ("$12", Fraction(12)),
    ("-$12", Fraction(-12)),
    ("$-12", Fraction(-12)),
    ("12 dollars", Fraction(12)),
    ("it is 5km away", Fraction(5)),
    ("50%", Fraction(50)),
    (".5", Fraction(1, 2)),
    ("0.125", Fraction(1, 8)),
    ("\\boxed{\\frac{3}{4}}", Fraction(3, 4)),
    ("\\dfrac{-1}{8}", Fraction(-1, 8)),
    ("1{,}234", Fraction(1234)),
    ("1\\,000", Fraction(1000)),
    ("\\$15", Fraction(15)),
    ("\\text{7 apples}", Fraction(7)),
    ("The answer is 72.", Fraction(72)),
    ("3 + 4 = 7", Fraction(7)),                      # several numbers: the last one
    ("1,2,3", Fraction(3)),                          # commas not in groups of three separate numbers
    ("12,34", Fraction(34)),
    ("5-3", Fraction(3)),                            # a minus after a digit is an operator, not a sign
    ("version 3.5.1", Fraction(7, 2)),               # no number starts after a decimal point
    ("x2 and H2O", None),                            # nor inside a word
    ("1/0", None),                                   # a zero denominator is no number
    ("1 1/2", Fraction(1, 2)),                       # documented limits: mixed numbers, spaced thousands
    ("1 234", Fraction(234)),
    ("1.234,5", Fraction(5)),
    ("1e5", Fraction(100000)),                       # scientific notation
    ("The answer is 2.5E-3.", Fraction(1, 400)),
    ("-1e2 apples", Fraction(-100)),
    ("1e999999", None),                              # an exponent beyond 400 makes no number (no huge integers)
    ("1e5x", Fraction(1)),                           # an exponent that runs into a word is not one
    ("no answer here", None),
    ("", None),
])
def test_parse_number_reads_the_last_number(text, value):
    assert parse_number(text) == value


def test_a_tag_is_found_in_any_case():
    assert extract_answer("<ANSWER>5</ANSWER>", "tag") == "5"
    assert extract_answer("<Answer> 7 </answer>", "tag") == "7"


@pytest.mark.parametrize("text, extract, answer", [
    ("<answer>42</answer>", "tag", "42"),
    ("I think 7. <answer> 1,234 </answer> Check: 99", "tag", "1,234"),  # the tagged one, not the last number
    ("<answer>1</answer> then <answer>2</answer>", "tag", "2"),         # several tags: the last
    ("<answer>\n  -3.5\n</answer>", "tag", "-3.5"),
    ("<answer></answer> 5", "tag", None),                               # an empty tag is no answer
    ("<answer>5", "tag", None),                                         # unclosed (cut off): no answer
    ("no tag 5", "tag", None),
    ("so \\boxed{\\frac{3}{4}}.", "boxed", "\\frac{3}{4}"),
    ("\\boxed{1} or \\boxed{2}", "boxed", "2"),
    ("\\boxed{x^{2}+1}", "boxed", "x^{2}+1"),                           # nested braces
    ("\\boxed{12", "boxed", None),
    ("\\fbox{8}", "boxed", "8"),
    ("1 then 2 then 3.", "last_number", "3"),
    ("nothing", "last_number", None),
])
def test_extract_answer_takes_the_last_candidate_in_the_format(text, extract, answer):
    assert extract_answer(text, extract) == answer


def test_extract_answer_with_another_tag_and_a_regex():
    assert extract_answer("<final>9</final><answer>1</answer>", "tag", tag="final") == "9"
    assert extract_answer("The answer is 4. No, the answer is 5.", "regex", pattern=r"answer is (\d+)") == "5"
    assert extract_answer("Answer: B", "regex", pattern=r"Answer: (?P<answer>[A-D])") == "B"
    assert extract_answer("ANSWER 3", "regex", pattern=r"ANSWER \d") == "ANSWER 3"  # no group: the whole match
    assert extract_answer("nothing", "regex", pattern=r"answer is (\d+)") is None


@pytest.mark.parametrize("answer, reference, compare, correct", [
    ("1,234", "1234", "numeric", True),
    ("$1,234.00", "1234", "numeric", True),
    ("12 dollars", "$12", "numeric", True),
    ("-3.5", "-7/2", "numeric", True),
    ("3.5", "-3.5", "numeric", False),            # the sign counts
    ("\\frac{3}{4}", "0.75", "numeric", True),
    ("0.75", "3/4", "numeric", True),
    ("0.7500001", "0.75", "numeric", True),       # within 1e-6
    ("0.7501", "0.75", "numeric", False),
    ("1000000.5", "1000000", "numeric", True),    # relative above 1: 1e-6 * 1e6 = 1
    ("1000002", "1000000", "numeric", False),
    ("100000000000000001", "100000000000000000", "numeric", True),  # 1 off at 1e17 is within 1e-6 relative
    ("1" * 40, "1" * 39 + "2", "numeric", True),
    ("1" * 40, "2" + "1" * 39, "numeric", False),
    ("72", "Janet sells 16 - 3 - 4 = 9 eggs ... 9 * 2 = 18\n#### 18", "numeric", False),
    ("18", "Janet sells 16 - 3 - 4 = 9 eggs ... 9 * 2 = 18\n#### 18", "numeric", True),  # GSM8K: after ####
    ("eighteen", "18", "numeric", False),         # number words are not read
    (None, "18", "numeric", False),               # no answer
    ("5", "no number", "numeric", False),         # a reference without a number matches nothing
    ("Paris.", "paris", "exact", False),
    ("  Paris. ", "Paris", "exact", True),
    ("New   York", "New York", "exact", True),
    ("3/4", "\\frac{3}{4}", "exact", True),
    ("0.75", "3/4", "exact", False),
    ("anything", "", "exact", False),             # an empty reference matches nothing
])
def test_is_correct_against_hand_written_expectations(answer, reference, compare, correct):
    assert is_correct(answer, reference, compare) is correct


def test_exact_ignore_case_and_normalization():
    assert is_correct("PARIS", "paris", "exact", ignore_case=True)
    assert normalize_text(" a \n b. ") == "a b"
    assert reference_answer("because ... #### 1,234") == "1,234"
    assert is_correct("1.01", "1", "numeric", tolerance=0.05) and not is_correct("1.1", "1", "numeric", tolerance=0.05)


def test_math_verify_compares_symbolically():
    pytest.importorskip("math_verify", reason="math-verify is the optional extra llm_pg[reason]")
    assert is_correct("\\frac{3}{4}", "0.75", "math_verify")
    assert is_correct("2\\sqrt{2}", "\\sqrt{8}", "math_verify")     # numeric compare cannot see this one
    assert not is_correct("\\sqrt{2}", "\\sqrt{8}", "math_verify")
    assert not is_correct("garbage }{", "1", "math_verify")           # unparsable: 0, never an exception


def rewards(components, completions, references, **columns):
    model = RewardMix.from_config(RewardConfig(components=components))
    return model([""] * len(completions), completions, references, **columns)


COMPLETIONS = ["<answer>1,234</answer>", "The total is 1,234 dollars.", "<answer>12</answer> no, 1234",
               "I do not know", "", "<answer>1234"]
REFERENCES = [["1234"]] * len(COMPLETIONS)


def test_strict_and_lenient_verifiers_and_the_format_reward():
    components = [{"name": "strict", "type": "verifier", "require_format": True},
                  {"name": "lenient", "type": "verifier", "weight": 0.0},
                  {"name": "format", "weight": 0.0}]
    total, parts = rewards(components, COMPLETIONS, REFERENCES)
    assert parts["strict"] == [1.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    assert parts["lenient"] == [1.0, 1.0, 0.0, 0.0, 0.0, 1.0]   # the tagged 12 wins over the later 1234
    assert parts["format"] == [1.0, 0.0, 1.0, 0.0, 0.0, 0.0]
    assert total == parts["strict"]                              # weight 0: reported, not trained on


def test_verifier_reads_several_references_and_a_reference_column():
    _, parts = rewards([{"name": "verifier", "extract": "boxed"}], ["\\boxed{3/4}", "\\boxed{2}"],
                       [["0.5", "0.75"], ["1"]])
    assert parts["verifier"] == [1.0, 0.0]                       # any reference may match
    _, parts = rewards([{"name": "verifier", "reference_column": "answer"}],
                       ["<answer>-3.5</answer>", "<answer>7</answer>", "<answer>7</answer>"], [[], [], []],
                       answer=["-7/2", 7, None])
    assert parts["verifier"] == [1.0, 1.0, 0.0]                  # numbers as the record holds them; None: no answer
    with pytest.raises(Exception, match="reference_column: the records have no field 'answer'"):
        rewards([{"name": "verifier", "reference_column": "answer"}], ["1"], [["1"]])


def test_verifier_never_raises_on_model_output():
    odd = ["<answer>", "\\boxed{", "$", "-", "1/0", "\u0000\ufffd", "<answer>}{</answer>", "9" * 400, "9" * 5000,
           "." * 1000, "1" + "0" * 30 + "/3"]
    _, parts = rewards([{"name": "verifier"}, {"name": "exact", "type": "verifier", "compare": "exact"},
                        {"name": "boxed", "type": "verifier", "extract": "boxed", "require_format": True}],
                       odd, [["1"]] * len(odd))
    assert all(v == 0.0 for values in parts.values() for v in values)


@pytest.mark.parametrize("component, needle", [
    ({"name": "verifier", "extract": "xml"}, "reward.components[0].extract: 'xml' is not one of"),
    ({"name": "verifier", "compare": "fuzzy"}, "reward.components[0].compare: 'fuzzy' is not one of"),
    ({"name": "verifier", "extract": "regex"}, "reward.components[0].pattern: required with extract: regex"),
    ({"name": "verifier", "extract": "regex", "pattern": "(unclosed"},
     "reward.components[0].pattern: not a valid regular expression"),
    ({"name": "verifier", "pattern": "x"}, "reward.components[0].pattern: only used with extract: regex"),
    ({"name": "format", "tag": "<answer>"}, "reward.components[0].tag: give a tag name such as 'answer'"),
    ({"name": "verifier", "tolerance": -1}, "reward.components[0].tolerance: must be a finite number >= 0"),
    ({"name": "verifier", "require_format": "yes"}, "reward.components[0].require_format: expected bool"),
    ({"name": "format", "compare": "exact"}, "reward.components[0]: unknown option(s) ['compare'] for type 'format'"),
])
def test_bad_verifier_options_are_one_line_config_errors(component, needle):
    from llm_pg.rewards.spec import check_reward_config

    with pytest.raises(ConfigError, match=re.escape(needle)) as info:
        check_reward_config(RewardConfig(components=[component]))
    assert "\n" not in str(info.value)


def test_evaluation_reports_strict_and_lenient_accuracy():
    """Held-out evaluation scores every component as reward_<name>: a weight-0 component is a metric only."""
    model = RewardMix.from_config(RewardConfig(components=[
        {"name": "strict", "type": "verifier", "require_format": True},
        {"name": "lenient", "type": "verifier", "weight": 0.0}, {"name": "format", "weight": 0.0}]))
    generations = [Generation(str(i), 0, "q", refs, c) for i, (c, refs) in enumerate(zip(COMPLETIONS, REFERENCES))]
    score_generations(generations, model)
    scores = summarize(generations)
    assert scores["reward_strict"] == pytest.approx(1 / 6) and scores["reward_lenient"] == pytest.approx(3 / 6)
    assert scores["reward_format"] == pytest.approx(2 / 6) and scores["reward"] == pytest.approx(1 / 6)


def test_signature_names_the_rules():
    model = RewardMix.from_config(RewardConfig(components=[{"name": "verifier", "require_format": True},
                                                             {"name": "format", "extract": "boxed"}]))
    assert model.signatures == {"verifier": "verifier|extract:tag|tag:answer|compare:numeric|tolerance:1e-06|"
                                            "require_format:true", "format": "format|extract:boxed"}


def test_math_verify_without_the_package_is_refused_when_the_config_is_checked(monkeypatch):
    import importlib.util

    from llm_pg.rewards.spec import check_reward_config

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "math_verify" else real(name, *a))
    with pytest.raises(ConfigError, match=re.escape("reward.components[0].compare: math_verify needs the math-verify "
                                                    "package: pip install 'llm_pg[reason]'")):
        check_reward_config(RewardConfig(components=[{"name": "verifier", "compare": "math_verify"}]))


def test_a_verifier_needs_references_unless_it_reads_a_reference_column():
    from llm_pg.config.schema import config_from_dict

    values = {"model": {"name_or_path": "tiny/model"}, "data": {"source": "x.jsonl", "reference_field": None},
              "evaluation": {"metric": "reward"}}
    with pytest.raises(ConfigError, match=re.escape("data.reference_field: null (prompt-only data), but "
                                                    "reward.components[0] (verifier) compares completions")):
        config_from_dict({**values, "reward": {"components": [{"name": "verifier"}]}})
    config = config_from_dict({**values, "reward": {"components": [{"name": "verifier", "reference_column": "gold"}]}})
    assert config.reward.components[0]["reference_column"] == "gold"
