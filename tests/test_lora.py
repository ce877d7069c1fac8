"""LoRA through peft (model.lora): only the adapters train, the KL reference is the policy with its adapters off,
checkpoints hold the adapter and resume exactly, merge_on_save writes a plain model, `llm-pg eval` reads adapters."""

from __future__ import annotations

import json
import math
import sys

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from helpers import assert_one_line_error, tiny_config, write_config_yaml
from llm_pg.runs.checkpoint import checkpoint_dir, latest_checkpoint
from llm_pg.cli import main
from llm_pg.config.schema import config_from_dict
from llm_pg.errors import ConfigError
from llm_pg.models.lora import adapter_dropouts, is_lora, load_adapter
from llm_pg.models.memory import update_mode
from llm_pg.models.policy import load_policy
from llm_pg.rollout.sampling import completion_logprobs, sample
from llm_pg.training.rl import setup_run, train, train_step

pytest.importorskip("peft")
LORA = {"model.lora.r": 4, "model.lora.alpha": 8.0}


def snapshot(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def adapter_weights(folder) -> dict[str, torch.Tensor]:
    return load_file(folder / "adapter_model.safetensors")


def read_metrics(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def lora_run(tiny_model_dir, tiny_data_file, tmp_path_factory):
    """An uninterrupted 3-step LoRA run (KL to the start on): the reference for the resume test."""
    run_dir = tmp_path_factory.mktemp("lora_run")
    train(tiny_config(tiny_model_dir, tiny_data_file, run_dir, **LORA, **{"kl.coef": 0.1}))
    return run_dir


def test_a_step_moves_the_adapters_and_leaves_every_base_weight_bit_identical(tiny_model_dir, tiny_data_file,
                                                                              tmp_path):
    config = tiny_config(tiny_model_dir, tiny_data_file, tmp_path, **LORA)
    run = setup_run(config)
    assert is_lora(run.model)
    before = snapshot(run.model)
    for step in range(2):  # B starts at 0, so A gets its first gradient in step 2
        train_step(config, run, step)
    after = snapshot(run.model)
    adapters = [name for name in before if ".lora_" in name]
    assert len(adapters) == 2 * 2 * 4  # A and B of q, k, v, o in each of the 2 layers
    for name in before:
        if name in adapters:
            assert not torch.equal(before[name], after[name]), f"{name} did not train"
        else:
            assert torch.equal(before[name], after[name]), f"{name} changed"


def test_only_the_adapters_and_the_value_head_require_grad_and_are_optimized(tiny_model_dir, tiny_data_file, tmp_path):
    config = tiny_config(tiny_model_dir, tiny_data_file, tmp_path, **LORA, **{"algorithm.name": "actor_critic"})
    run = setup_run(config)
    trained = {name for name, p in run.model.named_parameters() if p.requires_grad}
    assert trained == {name for name, _ in run.model.named_parameters() if ".lora_" in name or "value_head." in name}
    optimized = {id(p) for group in run.optimizer.param_groups for p in group["params"]}
    assert optimized == {id(p) for p in run.model.parameters() if p.requires_grad}
    critic = run.optimizer.param_groups[1]  # the value head trains at its own learning rate
    assert {id(p) for p in critic["params"]} == {id(p) for p in run.model.value_head.parameters()}
    head = snapshot(run.model.value_head)
    train_step(config, run, 0)
    assert any(not torch.equal(head[n], p) for n, p in run.model.value_head.named_parameters())


def test_the_kl_reference_is_the_untouched_base_model_even_after_the_adapters_trained(tiny_model_dir, tiny_data_file,
                                                                                       tmp_path):
    config = tiny_config(tiny_model_dir, tiny_data_file, tmp_path, **LORA, **{"kl.coef": 0.1})
    run = setup_run(config)
    assert run.reference.adapters_off and run.reference.model is run.model  # no second model
    for step in range(3):
        train_step(config, run, step)
    rollout = sample(run.model, run.tokenizer, [e.prompt_ids for e in run.train_examples[:3]], config.generation)
    args = (rollout.prompt_ids, rollout.prompt_mask, rollout.completion_ids, rollout.completion_mask)
    reference = run.reference.logprobs(*args, group_size=2)
    base, _ = completion_logprobs(load_policy(config.model), *args, group_size=2)
    torch.testing.assert_close(reference, base, atol=1e-6, rtol=0)
    policy, _ = completion_logprobs(run.model, *args, group_size=2)  # the adapters are back on afterwards
    assert (policy - base).abs().max() > 1e-3


def test_checkpoints_and_final_hold_the_adapter_only(lora_run):
    for folder in (checkpoint_dir(lora_run, 3) / "model", lora_run / "final"):
        names = {p.name for p in folder.iterdir()}
        assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json"} <= names
        assert not names & {"model.safetensors", "config.json", "README.md"}, names
    final, last = adapter_weights(lora_run / "final"), adapter_weights(checkpoint_dir(lora_run, 3) / "model")
    assert final.keys() == last.keys() and all(torch.equal(final[k], last[k]) for k in final)
    assert all(".lora_A." in k or ".lora_B." in k for k in final) and len(final) == 16


def test_resume_from_a_lora_checkpoint_matches_an_uninterrupted_run(lora_run, tiny_model_dir, tiny_data_file,
                                                                     tmp_path):
    overrides = {**LORA, "kl.coef": 0.1}
    train(tiny_config(tiny_model_dir, tiny_data_file, tmp_path, **overrides, **{"training.max_steps": 2}))
    assert latest_checkpoint(tmp_path) == checkpoint_dir(tmp_path, 2)
    train(tiny_config(tiny_model_dir, tiny_data_file, tmp_path, **overrides), resume=True)
    resumed, uninterrupted = read_metrics(tmp_path), read_metrics(lora_run)
    assert [m["step"] for m in resumed] == [1, 2, 3]
    assert resumed[2]["reward/mean"] == uninterrupted[2]["reward/mean"]  # the same prompts and samples
    assert resumed[2]["policy/kl"] == pytest.approx(uninterrupted[2]["policy/kl"], rel=1e-4, abs=1e-6)
    a, b = adapter_weights(tmp_path / "final"), adapter_weights(lora_run / "final")
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-5, rtol=1e-4)


def test_resuming_with_other_lora_settings_is_refused(lora_run, tiny_model_dir, tiny_data_file, tmp_path):
    import shutil

    shutil.copytree(lora_run, tmp_path / "run")
    with pytest.raises(ConfigError, match=r"^model\.lora\.r: the checkpoint .* holds a LoRA adapter"):
        setup_run(tiny_config(tiny_model_dir, tiny_data_file, tmp_path / "run", **{"training.max_steps": 4}),
                  resume=True)


def test_merge_on_save_writes_a_plain_model_with_the_peft_models_logits(lora_run, tiny_model_dir, tiny_data_file,
                                                                         tmp_path):
    train(tiny_config(tiny_model_dir, tiny_data_file, tmp_path, **LORA,
                      **{"kl.coef": 0.1, "model.lora.merge_on_save": True, "algorithm.name": "actor_critic"}))
    final = tmp_path / "final"
    assert (final / "model.safetensors").is_file() and not (final / "adapter_config.json").exists()
    assert (final / "value_head.safetensors").is_file()  # the critic is kept beside the merged policy
    merged = AutoModelForCausalLM.from_pretrained(final)
    assert not is_lora(merged) and not any("lora" in name for name, _ in merged.named_parameters())
    config = tiny_config(tiny_model_dir, tiny_data_file, tmp_path)
    peft_model = load_adapter(load_policy(config.model), checkpoint_dir(tmp_path, 3) / "model")  # the same step
    ids = torch.tensor([[1, 5, 17, 30, 42, 8, 64, 99]])
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=ids).logits, peft_model(input_ids=ids).logits,
                                   atol=1e-5, rtol=1e-5)
        base = load_policy(config.model)(input_ids=ids).logits
    assert (merged(input_ids=ids).logits - base).abs().max() > 1e-3  # the adapters did change the model


def test_llm_pg_eval_reads_an_adapter_folder_and_scores_perplexity_under_the_base_model(lora_run, tmp_path, capsys):
    from llm_pg.config.schema import load_config
    from llm_pg.evaluation.commands import _reference_model
    from llm_pg.models.lora import load_saved_policy

    config = load_config(lora_run / "config.yaml")
    policy = load_saved_policy(config.model, str(lora_run / "final"))  # what `llm-pg eval` loads
    reference = _reference_model(config, str(lora_run / "final"), policy)
    assert is_lora(policy) and reference.model is policy and reference.adapters_off
    ids = torch.tensor([[1, 5, 17, 30, 42, 8, 64, 99]])
    with torch.no_grad():
        assert (policy(input_ids=ids).logits - load_policy(config.model)(input_ids=ids).logits).abs().max() > 1e-3

    common = ["--config", str(lora_run / "config.yaml"), "--split", "test", "data.max_eval_samples=4"]
    assert main(["eval", "--model", str(lora_run / "final"), "--output", str(tmp_path / "lora.json"), *common]) == 0
    assert main(["eval", "--model", config.model.name_or_path, "--output", str(tmp_path / "base.json"), *common]) == 0
    capsys.readouterr()
    lora = [json.loads(line) for line in (tmp_path / "lora.jsonl").read_text().splitlines()]
    base = [json.loads(line) for line in (tmp_path / "base.jsonl").read_text().splitlines()]
    assert len(lora) == len(base) == 4 and all(math.isfinite(g["ref_logprob"]) for g in lora)
    # Both evaluations score perplexity under the base model (for the adapter: its adapters off): the reference
    # that scored the adapter's completions gives any completion the base model's log-probabilities.
    prompt, completion = ids[:, :5], ids[:, 5:]
    ones = lambda t: torch.ones_like(t)  # noqa: E731
    with torch.no_grad():
        adapters_off = reference.logprobs(prompt, ones(prompt), completion, ones(completion))
        base_logprobs, _ = completion_logprobs(load_policy(config.model), prompt, ones(prompt), completion,
                                               ones(completion))
    torch.testing.assert_close(adapters_off, base_logprobs, atol=1e-6, rtol=0)


def test_lora_dropout_acts_in_the_update_only(tiny_model_dir, tiny_data_file, tmp_path):
    config = tiny_config(tiny_model_dir, tiny_data_file, tmp_path, **LORA, **{"model.lora.dropout": 0.5})
    run = setup_run(config)
    dropouts = adapter_dropouts(run.model)
    assert len(dropouts) == 8 and all(d.p == 0.5 and not d.training for d in dropouts)
    with torch.no_grad():
        for name, p in run.model.named_parameters():
            if ".lora_B." in name:
                p.normal_()  # B = 0 would hide dropout on the adapters' input
    rollout = sample(run.model, run.tokenizer, [e.prompt_ids for e in run.train_examples[:2]], config.generation)
    args = (rollout.prompt_ids, rollout.prompt_mask, rollout.completion_ids, rollout.completion_mask)
    with torch.no_grad():
        assert torch.equal(completion_logprobs(run.model, *args)[0], completion_logprobs(run.model, *args)[0])
        with update_mode(run.model):
            assert all(d.training for d in dropouts)
            assert not torch.equal(completion_logprobs(run.model, *args)[0], completion_logprobs(run.model, *args)[0])
    assert not any(d.training for d in dropouts)


@pytest.mark.parametrize("override, field", [
    ("model.lora.r=-1", "model.lora.r"), ("model.lora.alpha=0", "model.lora.alpha"),
    ("model.lora.dropout=1.0", "model.lora.dropout"), ("model.lora.target_modules=attention", "model.lora.target_modules"),
    ("model.lora.target_modules=[]", "model.lora.target_modules"), ("model.lora.rank=8", "model.lora.r"),
])
def test_bad_lora_settings_are_one_line_config_errors(override, field, tiny_model_dir, tiny_data_file, tmp_path,
                                                      capsys):
    config_yaml = write_config_yaml(tmp_path / "c.yaml", tiny_model_dir, tiny_data_file, tmp_path / "run")
    assert main(["train", "--config", str(config_yaml), override]) == 2
    assert_one_line_error(capsys.readouterr().err, field)


def test_target_modules_that_match_no_layer_fail_at_setup_with_the_field(tiny_model_dir, tiny_data_file, tmp_path,
                                                                         capsys):
    config_yaml = write_config_yaml(tmp_path / "c.yaml", tiny_model_dir, tiny_data_file, tmp_path / "run")
    assert main(["train", "--config", str(config_yaml), "model.lora.r=4", "model.lora.target_modules=[c_attn]"]) == 2
    assert_one_line_error(capsys.readouterr().err, "model.lora.target_modules:", "c_attn")


def test_all_linear_is_accepted_and_adapts_the_mlp_too(tiny_model_dir, tiny_data_file, tmp_path):
    config = tiny_config(tiny_model_dir, tiny_data_file, tmp_path, **LORA, **{"model.lora.target_modules": "all-linear"})
    run = setup_run(config)
    adapted = {name.split(".lora_A.")[0].rsplit(".", 1)[1] for name, _ in run.model.named_parameters()
               if ".lora_A." in name}
    assert adapted == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}  # not lm_head


def test_without_peft_the_error_says_what_to_install(tiny_model_dir, tiny_data_file, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "peft", None)  # `import peft` now raises ImportError
    config = config_from_dict({"model": {"name_or_path": str(tiny_model_dir), "lora": {"r": 4}},
                               "data": {"source": str(tiny_data_file), "use_chat_template": False},
                               "training": {"output_dir": str(tmp_path)}})
    with pytest.raises(ConfigError, match=r'^model\.lora\.r > 0 needs peft: pip install "llm_pg\[lora\]"'):
        setup_run(config)


def test_best_policy_is_an_adapter_scored_against_the_base_and_pushes_as_a_peft_repo(tiny_model_dir, tiny_data_file,
                                                                                      tmp_path, monkeypatch):
    from huggingface_hub import HfApi

    from llm_pg.config.schema import HubConfig
    from llm_pg.reporting.hub import push_run
    from llm_pg.evaluation.periodic import TrainingEvaluator

    settings = {**LORA, "training.max_steps": 2, "evaluation.eval_every": 1, "evaluation.metric": "perplexity",
                "data.split_fractions": [0.5, 0.25, 0.25]}
    config = tiny_config(tiny_model_dir, tiny_data_file, tmp_path, **settings)
    run = setup_run(tiny_config(tiny_model_dir, tiny_data_file, tmp_path / "probe", **settings))  # a folder of its own
    evaluator = TrainingEvaluator(config, run)  # kl.coef = 0: no KL reference, yet perplexity needs the start
    assert evaluator.reference.model is run.model and evaluator.reference.adapters_off
    train(config)
    assert (tmp_path / "best" / "adapter_model.safetensors").is_file() and (tmp_path / "best" / "best.json").is_file()
    assert math.isfinite(read_metrics(tmp_path)[-1]["eval/perplexity"])

    sent = {}
    monkeypatch.setattr(HfApi, "create_repo", lambda api, repo_id, **kwargs: None)
    monkeypatch.setattr(HfApi, "create_commit", lambda api, repo_id, operations, **kwargs: sent.update(
        {op.path_in_repo: op.path_or_fileobj for op in operations}))
    push_run(tmp_path, HubConfig(repo_id="someone/tiny-lora", folder="best"), token="hf_test")
    assert {"adapter_config.json", "adapter_model.safetensors", "README.md"} <= set(sent)
    card = sent["README.md"].decode()
    assert "library_name: peft" in card and "holds a LoRA adapter" in card
