"""Verifiable rewards: extract the final answer from a completion and compare it with the reference answer.

    v = 1  if compare(extract(completion), reference) for some reference of the sample
        0  otherwise (no answer found, an answer that does not parse, or a wrong one; never an exception)

Extraction (`extract`), each taking the LAST candidate of its kind in the completion:

| extract | the answer is |
|---|---|
| `tag` | the text inside the last `<answer>...</answer>` (the tag name is the `tag` option, in any case: `<ANSWER>`); an empty tag is none |
| `boxed` | the text inside the last `\\boxed{...}` (or `\\fbox{...}`), braces balanced |
| `regex` | the last match of `pattern`: its group named `answer`, else its first group, else the whole match |
| `last_number` | the last number of the completion (number rules below) |

With `require_format: false` (lenient, "the answer anywhere") a completion without that format falls back to its
last number (`compare: numeric`), the whole completion (`exact`, `reasoning_gym`, and `math_verify`, which finds
its own answer); with `require_format: true` (strict) it scores 0. The `format` reward type scores 1 when the
format is present.

Numbers (`parse_number`, also used for the reference): the last number of the text after LaTeX clean-up
(`\\frac{3}{4}` -> 3/4, `\\text{...}` -> its text, `\\$` -> $, `1{,}234` -> 1,234, the Unicode minus -> -).
A number is an optional sign, an optional currency symbol ($, €, £), digits with optional thousands commas
(`1,234`: groups of three) and decimals (`-3.5`, `.5`), an optional `/denominator` (`3/4`) and `%` (`50%` is 50);
a unit after it is ignored (`12 dollars` is 12). A number does not start inside a word (`x2`, `H2O`) or after a
decimal point, so `5-3` is 5 and 3 and `3.5.1` is 3.5; scientific notation is read (`1e5`, `2.5E-3`; an
exponent beyond 400 makes no number). Not understood: number words (`twelve`), mixed numbers (`1 1/2` reads as
1/2), spaces or dots as thousands separators (the last number of `1 234` is 234, of `1.234,5` it is 5).

Comparison (`compare`): `numeric`: |a - b| <= tolerance * max(1, |b|) (b: the reference's number); `exact`: the
two texts after the clean-up, whitespace collapsed, the ends stripped of spaces and one final period (and
casefolded with `ignore_case`); `math_verify`: Hugging Face's math-verify (`pip install "llm_pg[reason]"`),
symbolic equality of the parsed expressions; `reasoning_gym`: the task's own verifier (reasoning_gym's
score_answer, in [0, 1]; records of a `reasoning_gym:<task>` source). A GSM8K reference (`reasoning... #### 72`)
counts from its last `####`.
"""

from __future__ import annotations

import functools
import math
import re
import threading
from fractions import Fraction
from importlib.metadata import version

from llm_pg.data.chat import SOURCE_PROMPT_COLUMN

FORMATS = ("tag", "boxed", "regex", "last_number")
MAX_EXPONENT = 400  # scientific notation beyond 1e400 is not read as a number
COMPARISONS = ("numeric", "exact", "math_verify", "reasoning_gym")

_NUMBER = re.compile(
    r"(?<![\w.])"                                    # not inside a word or after a decimal point
    r"(?P<sign>[-+]?)[$€£]?(?P<sign2>[-+]?)(?=\.?\d)"  # sign and currency: -$12, $-12; a digit must follow
    r"(?P<digits>\d{1,3}(?:,\d{3})+(?!\d)|\d+)?"     # 1,234 (commas every three digits) or 1234
    r"(?:\.(?P<decimals>\d+))?"                      # .5
    r"(?:[eE](?P<exponent>[-+]?\d+)(?!\w|\.\d))?"    # 1e5, 2.5E-3 (not 1e5x)
    r"(?:\s*/\s*(?P<denominator>\d+)(?![\d.,]\d))?"  # 3/4
)
_FRAC = re.compile(r"\\[dt]?frac\s*\{\s*([-+]?\d+(?:\.\d+)?)\s*\}\s*\{\s*([-+]?\d+(?:\.\d+)?)\s*\}")
_TEXT = re.compile(r"\\(?:text|textbf|mathrm|mbox)\s*\{([^{}]*)\}")
_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")


def clean_latex(text: str) -> str:
    """The LaTeX that wraps numbers, removed: \\frac{a}{b} -> a/b, \\text{x} -> x, \\$ -> $, \\% -> %, 1{,}234 ->
    1,234, thin spaces between digits dropped, the Unicode minus (U+2212) -> -."""
    text = text.replace("\u2212", "-").replace("{,}", ",").replace("\\$", "$").replace("\\%", "%")
    text = re.sub(r"(?<=\d)\\[,!;:](?=\d)", "", text)
    text = _TEXT.sub(r"\1", text)
    return _FRAC.sub(r"\1/\2", text)


def number_value(match: re.Match) -> Fraction | None:
    """The exact value of one _NUMBER match (None for a zero denominator, or past Python's 4300-digit limit)."""
    digits = (match["digits"] or "0").replace(",", "")
    exponent = int(match["exponent"]) if match["exponent"] and len(match["exponent"]) < 6 else 0
    if match["exponent"] and (len(match["exponent"]) >= 6 or abs(exponent) > MAX_EXPONENT):
        return None  # 1e999999 would be a million-digit integer
    try:
        value = Fraction(f"{digits}.{match['decimals']}" if match["decimals"] else digits) * Fraction(10) ** exponent
        if match["denominator"] is not None:
            if int(match["denominator"]) == 0:
                return None
            value /= int(match["denominator"])
    except ValueError:  # int(): "Exceeds the limit (4300 digits) for integer string conversion"
        return None
    return -value if "-" in (match["sign"], match["sign2"]) else value


def numbers(text: str) -> list[tuple[str, Fraction]]:
    """Every number of the text (after clean_latex), in order: (its text, its exact value)."""
    found = []
    for match in _NUMBER.finditer(clean_latex(text)):
        value = number_value(match)
        if value is not None:
            found.append((match.group(0), value))
    return found


def parse_number(text: str | None) -> Fraction | None:
    """The last number of the text (module docstring), or None when it has none."""
    found = numbers(text) if text else []
    return found[-1][1] if found else None


def boxed_contents(text: str) -> list[str]:
    """The contents of every \\boxed{...} / \\fbox{...} with balanced braces, in order."""
    contents = []
    for match in _BOXED.finditer(text):
        depth, start = 1, match.end()
        for i in range(start, len(text)):
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            if depth == 0:
                contents.append(text[start:i])
                break
    return contents


def regex_contents(text: str, pattern: str) -> list[str]:
    """Every match of the pattern: its group `answer`, else its first group, else the whole match."""
    compiled = re.compile(pattern, re.DOTALL)

    def part(m: re.Match) -> str:
        if "answer" in compiled.groupindex:
            return m["answer"] or ""
        return (m.group(1) or "") if compiled.groups else m.group(0)
    return [part(m) for m in compiled.finditer(text)]


def extract_answer(text: str, extract: str = "tag", tag: str = "answer", pattern: str | None = None) -> str | None:
    """The answer in the completion's format (the last candidate, stripped), or None when it has none."""
    if extract == "tag":
        candidates = re.findall(f"<{re.escape(tag)}>(.*?)</{re.escape(tag)}>", text, re.DOTALL | re.IGNORECASE)
    elif extract == "boxed":
        candidates = boxed_contents(text)
    elif extract == "regex":
        candidates = regex_contents(text, pattern or "")
    elif extract == "last_number":
        candidates = [n for n, _ in numbers(text)]
    else:
        raise ValueError(f"extract must be one of {FORMATS}, got {extract!r}")
    answer = candidates[-1].strip() if candidates else ""
    return answer or None


def reference_answer(reference: str) -> str:
    """The reference's final answer: GSM8K writes the reasoning, then `#### 72`; the text after the last ####."""
    return reference.rsplit("####", 1)[1].strip() if "####" in reference else reference.strip()


def normalize_text(text: str, ignore_case: bool = False) -> str:
    """For `exact`: clean_latex, whitespace collapsed, the ends stripped of spaces and one final period."""
    text = " ".join(clean_latex(text).split())
    text = text[:-1].rstrip() if text.endswith(".") else text
    return text.casefold() if ignore_case else text


def numbers_equal(answer: Fraction | None, reference: Fraction | None, tolerance: float) -> bool:
    """|a - b| <= tolerance * max(1, |b|): absolute below 1, relative above; False when either is missing.

    In exact fractions: a float would overflow on a 400-digit answer."""
    if answer is None or reference is None:
        return False
    return abs(answer - reference) <= Fraction(tolerance) * max(Fraction(1), abs(reference))


def _math_parse(text: str, timeout: int | None) -> list:
    """math-verify's parse of an answer: LaTeX outside $...$ is only read inside \\boxed{}, plain text (`12
    dollars`) better without it; the first reading that finds an expression counts."""
    from math_verify import parse

    latex = any(c in text for c in "\\^{_")
    readings = [f"\\boxed{{{text}}}", text] if latex else [text, f"\\boxed{{{text}}}"]
    for reading in readings:
        parsed = parse(reading, parsing_timeout=timeout)
        if parsed:
            return parsed
    return []


def math_verify_equal(answer: str, reference: str) -> bool:
    """math-verify's symbolic equality of the two parsed expressions; False when either does not parse."""
    from math_verify import verify

    # math-verify times out with signal.alarm, which only the main thread may set: elsewhere it runs untimed
    timeout = 5 if threading.current_thread() is threading.main_thread() else None
    try:
        gold, guess = _math_parse(reference, timeout), _math_parse(answer, timeout)
        return bool(gold and guess and verify(gold, guess, timeout_seconds=timeout))
    except Exception:  # math-verify parses model output: whatever it cannot read is simply not correct
        return False


@functools.lru_cache(maxsize=None)
def _task_scorer(task: str):
    from reasoning_gym import get_score_answer_fn

    return get_score_answer_fn(task)


def reasoning_gym_score(answer: str | None, reference: str, task: str, metadata: dict, question: str = "") -> float:
    """reasoning_gym's own verifier of the task, score_answer(answer, entry) in [0, 1] (a few tasks give partial
    credit); 0 for no answer, or when the task's scorer raises on it."""
    if answer is None:
        return 0.0
    entry = {"question": question, "answer": reference or None, "metadata": metadata}  # "": no oracle answer
    try:
        value = float(_task_scorer(task)(answer, entry))
    except Exception:  # the task's own code on model output: what it cannot score is not correct
        return 0.0
    return value if math.isfinite(value) else 0.0


def is_correct(answer: str | None, reference: str, compare: str = "numeric", tolerance: float = 1e-6,
               ignore_case: bool = False) -> bool:
    """Does the extracted answer match this reference (reference_answer applied) under `compare`?"""
    if answer is None:
        return False
    reference = reference_answer(reference)
    if compare == "numeric":
        return numbers_equal(parse_number(answer), parse_number(reference), tolerance)
    if compare == "exact":
        return bool(reference) and normalize_text(answer, ignore_case) == normalize_text(reference, ignore_case)
    if compare == "math_verify":
        return math_verify_equal(answer, reference)
    raise ValueError(f"compare must be one of {COMPARISONS}, got {compare!r}")


class VerifierReward:
    """`type: verifier`: 1 when the completion's answer matches one of the sample's references, else 0.

    The references are the sample's own (data.reference_field), or the record field `reference_column`.
    """

    def __init__(self, extract: str = "tag", tag: str = "answer", pattern: str | None = None,
                 compare: str = "numeric", tolerance: float = 1e-6, ignore_case: bool = False,
                 require_format: bool = False, reference_column: str | None = None, key: str = "verifier"):
        self.extract, self.tag, self.pattern = extract, tag, pattern
        self.compare, self.tolerance, self.ignore_case = compare, tolerance, ignore_case
        self.require_format, self.reference_column, self.key = require_format, reference_column, key
        self.signature = (f"verifier|extract:{extract}" + (f"|tag:{tag}" if extract == "tag" else "")
                          + (f"|pattern:{pattern}" if extract == "regex" else "") + f"|compare:{compare}"
                          + (f"|tolerance:{tolerance:g}" if compare == "numeric" else "")
                          + (f"|math-verify:{version('math-verify')}" if compare == "math_verify" else "")
                          + (f"|reasoning-gym:{version('reasoning-gym')}" if compare == "reasoning_gym" else "")
                          + f"|require_format:{str(require_format).lower()}")

    def answer(self, completion: str) -> str | None:
        """The answer compared: in the format, else (lenient) the fallback of the module docstring."""
        found = extract_answer(completion, self.extract, self.tag, self.pattern)
        if found is not None or self.require_format:
            return found
        if self.compare == "numeric":
            return extract_answer(completion, "last_number")
        return completion.strip() or None

    def references_of(self, references: list, columns: dict) -> list[list[str]]:
        if self.reference_column is None:
            return [list(refs) for refs in references]
        if self.reference_column not in columns:
            raise ValueError(f"{self.key}.reference_column: the records have no field '{self.reference_column}' "
                           f"(fields: {sorted(columns)})")
        return [[] if v is None else [str(r) for r in v] if isinstance(v, (list, tuple)) else [str(v)]
                for v in columns[self.reference_column]]

    def task_scores(self, completions: list[str], references: list[list[str]], columns: dict) -> list[float]:
        """compare: reasoning_gym: the best score of the task's own verifier over the sample's references."""
        if "task" not in columns or "metadata" not in columns:
            raise ValueError(f"{self.key}.compare: reasoning_gym scores with the task's own verifier, which needs "
                             "records of a 'reasoning_gym:<task>' data source (fields task and metadata; these "
                             f"records have {sorted(columns)})")
        questions = columns.get(SOURCE_PROMPT_COLUMN) or [""] * len(completions)
        return [max((reasoning_gym_score(self.answer(c), r, task, metadata, str(q)) for r in refs), default=0.0)
                for c, refs, task, metadata, q in zip(completions, references, columns["task"], columns["metadata"],
                                                      questions)]

    def __call__(self, prompts, completions, references, **columns) -> list[float]:
        if self.compare == "reasoning_gym":
            return self.task_scores(completions, self.references_of(references, columns), columns)
        values = []
        for completion, refs in zip(completions, self.references_of(references, columns)):
            answer = self.answer(completion)
            values.append(float(any(is_correct(answer, r, self.compare, self.tolerance, self.ignore_case)
                                    for r in refs)))
        return values


class FormatReward:
    """`type: format`: 1 when the completion has the answer format (a non-empty tag, a box, a regex match, a
    number), else 0. With a verifier of the same format: strict accuracy = verifier with require_format."""

    def __init__(self, extract: str = "tag", tag: str = "answer", pattern: str | None = None):
        self.extract, self.tag, self.pattern = extract, tag, pattern
        self.signature = f"format|extract:{extract}" + (f"|tag:{tag}" if extract == "tag" else "") + (
            f"|pattern:{pattern}" if extract == "regex" else "")

    def __call__(self, prompts, completions, references, **columns) -> list[float]:
        return [float(extract_answer(c, self.extract, self.tag, self.pattern) is not None) for c in completions]
