"""Push a run to the Hugging Face Hub: the policy (safetensors), tokenizer, value head, generation config, the
resolved training config, evaluation scores, the report with its plots, and a model card, in one commit.

The token comes from HF_TOKEN or the cached login (`hf auth login`), is handed to HfApi and nowhere else: it is
never logged, printed or written.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

from llm_pg.errors import LlmPgError
from llm_pg.evaluation.metrics import ordered_names

logger = logging.getLogger(__name__)
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
WEIGHT_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")  # pickled weights are never uploaded
METRIC_TYPES = {"bleu": ("bleu", "BLEU (corpus, /100)"), "chrf": ("chrf", "chrF (/100)"),
                "rouge1": ("rouge", "ROUGE-1"), "rouge2": ("rouge", "ROUGE-2"), "rougeL": ("rouge", "ROUGE-L"),
                "rougeLsum": ("rouge", "ROUGE-Lsum"), "reward": ("reward", "reward (training reward function)"),
                "perplexity": ("perplexity", "perplexity under the reference model")}


class HubError(LlmPgError):
    """A push that cannot start or that the Hub refused."""


def hub_token() -> str:
    """HF_TOKEN or the cached login; the value is returned, never shown."""
    from huggingface_hub import get_token

    token = get_token()
    if not token:
        raise HubError("hub: no Hugging Face token; set HF_TOKEN or run `hf auth login` (a write token)")
    return token


def _hub_id(name: str | None) -> str | None:
    """name when it reads as a Hub id (owner/name) and is not a local path."""
    if name and HUB_ID.match(name) and not Path(name).expanduser().exists():
        return name
    return None


def _hub_dataset(source: str) -> bool:
    """Whether data.source names a Hub dataset ('cnn_dailymail', 'EdinburghNLP/xsum'), not a file or the demo."""
    return (source != "demo" and re.match(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$", source) is not None
            and not Path(source).expanduser().exists() and Path(source).suffix not in (".jsonl", ".json", ".csv",
                                                                                       ".parquet"))


def files_to_upload(run_dir: Path, folder: str = "final") -> dict[str, Path]:
    """{path in the repository: local file}; the policy folder's files go to the repository root."""
    model_dir = run_dir / folder
    if not any((model_dir / name).is_file() for name in ("config.json", "adapter_config.json")):
        raise HubError(f"hub.folder: {model_dir} holds no saved model (config.json, or adapter_config.json for a "
                       "LoRA adapter); train to the end (training.save_final_model) or choose hub.folder=best")
    files = {p.name: p for p in sorted(model_dir.iterdir()) if p.is_file() and not p.name.startswith(".")
             and not p.name.endswith(WEIGHT_SUFFIXES)}
    if not any(name.endswith(".safetensors") for name in files):
        raise HubError(f"hub: {model_dir} has no .safetensors weights")
    files["training_config.yaml"] = run_dir / "config.yaml"
    for name in ("eval_before.json", "eval_after.json", "report.md"):
        if (run_dir / name).is_file():
            files[name] = run_dir / name
    for plot in sorted((run_dir / "plots").glob("*.png")):
        files[f"plots/{plot.name}"] = plot
    return files


CARD_TEMPLATE = """---
{{ card_data }}
---

# {{ model_name }}

{{ base_model_line }}fine-tuned with policy-gradient reinforcement learning by llm_pg:
{{ algorithm }}, reward {{ reward }}, {{ steps }} steps.

## Held-out results

{{ results }}

The full training report (curves, confidence intervals, samples) is in [report.md](report.md); the resolved training
configuration in [training_config.yaml](training_config.yaml).
{% for plot in plots %}
![{{ plot }}](plots/{{ plot }}){% endfor %}

## Usage

```python
from transformers import AutoModelForCausalLM, AutoTokenizer

tokenizer = AutoTokenizer.from_pretrained("{{ repo_id }}")
model = AutoModelForCausalLM.from_pretrained("{{ repo_id }}")
```
{% if adapter %}
This repository holds a LoRA adapter: loading it needs `pip install peft` and the base model named in
adapter_config.json.
{% endif %}"""


def model_card(run_dir: Path, repo_id: str, hub_config) -> "ModelCard":  # noqa: F821
    """The model card: YAML metadata (base_model, datasets, library_name, tags, model-index with the test split's
    after-training scores) and a short description, rendered with huggingface_hub.ModelCard."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    from llm_pg.reporting.report import load_run_config, reward_components

    config = load_run_config(run_dir)
    adapter = (run_dir / hub_config.folder / "adapter_config.json").is_file()  # a LoRA run without merge_on_save
    base_model = hub_config.base_model or _hub_id(config.model.name_or_path)
    source = config.data.source
    datasets = list(hub_config.datasets) or ([source] if _hub_dataset(source) else [])
    scores = json.loads((run_dir / "eval_after.json").read_text())["scores"] if (run_dir / "eval_after.json"
                                                                                ).is_file() else {}
    dataset_name = datasets[0] if datasets else ("Python standard library docstrings (llm_pg demo)"
                                                 if source == "demo" else Path(source).name)
    split = config.data.test_split
    results = [EvalResult(task_type="text-generation", dataset_type=datasets[0] if datasets else "custom",
                          dataset_name=dataset_name, dataset_split=split, metric_type=METRIC_TYPES[k][0],
                          metric_name=METRIC_TYPES[k][1], metric_value=round(float(scores[k]), 4))
               for k in ordered_names(scores) if k in METRIC_TYPES]
    algorithm = config.algorithm
    data = ModelCardData(
        base_model=base_model, datasets=datasets or None, library_name="peft" if adapter else "transformers",
        license=None,
        tags=["llm_pg", "reinforcement-learning", "policy-gradient", algorithm.name],
        model_name=repo_id.split("/")[1], eval_results=results or None)
    before_file = run_dir / "eval_before.json"
    before = json.loads(before_file.read_text())["scores"] if before_file.is_file() else {}
    table = "\n".join(["| metric | before training | after training |", "|---|---|---|"] + [
        f"| {METRIC_TYPES[k][1]} | {f'{before[k]:.4f}' if k in before else '–'} | {float(scores[k]):.4f} |"
        for k in ordered_names(scores) if k in METRIC_TYPES])
    plots = [p for p in ("changes.png", "heldout.png", "reward.png") if (run_dir / "plots" / p).is_file()]
    return ModelCard.from_template(
        data, template_str=CARD_TEMPLATE, repo_id=repo_id, model_name=repo_id.split("/")[1],
        base_model_line=f"[{base_model}](https://huggingface.co/{base_model}) " if base_model else "A causal LM ",
        algorithm=f"{algorithm.name} (baseline {algorithm.baseline})",
        reward=" + ".join(f"{c.weight}·{c.name}" for c in reward_components(config)),
        steps=config.training.max_steps, plots=plots, adapter=adapter,
        results=(f"Split `{split}` of {dataset_name}, held out from training:\n\n{table}" if results else
                 "Not measured (evaluation.after_training was off)."))


def _cause(error: Exception, token: str | None) -> str:
    """The first line of an upload error, with its type, and with the token masked should it appear in it."""
    first = str(error).strip().splitlines()[0] if str(error).strip() else ""
    if token:
        first = first.replace(token, "***")
    return f"{type(error).__name__}: {first}" if first else type(error).__name__


def push_run(run_dir: str | Path, hub_config, token: str | None = None) -> str:
    """Upload the run in one commit to hub_config.repo_id (created if missing); returns the commit URL."""
    from huggingface_hub import CommitOperationAdd, HfApi

    run_dir = Path(run_dir)
    if not hub_config.repo_id:
        raise HubError("hub.repo_id: set it (--repo-id user/name, or hub.repo_id in the config) to push")
    if not HUB_ID.match(hub_config.repo_id):
        raise HubError(f"hub.repo_id: write it as user/name, got '{hub_config.repo_id}'")
    if not (run_dir / "config.yaml").is_file():
        raise HubError(f"{run_dir} is not a run folder (no config.yaml)")
    files = files_to_upload(run_dir, hub_config.folder)
    card = model_card(run_dir, hub_config.repo_id, hub_config)
    token = token or hub_token()
    api = HfApi(token=token)
    operations = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(path)) for name, path in files.items()]
    operations.append(CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=str(card).encode()))
    try:
        api.create_repo(hub_config.repo_id, private=hub_config.private, exist_ok=True, repo_type="model")
        if hub_config.revision:
            api.create_branch(hub_config.repo_id, branch=hub_config.revision, exist_ok=True)
        commit = api.create_commit(hub_config.repo_id, operations=operations, revision=hub_config.revision,
                                   commit_message=f"llm_pg: upload {run_dir.name} ({hub_config.folder} policy)")
    except Exception as e:  # HTTP errors, but also no network (ConnectionError), timeouts, a full disk, ...
        raise HubError(f"hub: pushing to {hub_config.repo_id} failed: {_cause(e, token)}") from None
    url = getattr(commit, "commit_url", None) or f"https://huggingface.co/{hub_config.repo_id}"
    logger.info("pushed %d files to %s", len(operations), url)
    return url
