"""The built wheel holds every module of the source tree and the recipes; the old flat import paths still work.

The tests run from the source tree, so a subpackage missing from pyproject.toml's `packages` would pass them all
and ship a broken wheel: this builds the wheel (setuptools, no network, no build isolation) and reads it.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path

import pytest

import llm_pg

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel_names(tmp_path_factory) -> set[str]:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(out)], check=True, capture_output=True, cwd=out)
    (wheel,) = out.glob("llm_pg-*.whl")
    return set(zipfile.ZipFile(wheel).namelist())


def test_the_wheel_holds_every_module_and_recipe(wheel_names):
    modules = {str(p.relative_to(ROOT)) for p in (ROOT / "llm_pg").rglob("*.py")}
    assert modules - wheel_names == set()
    assert {p.parent.name for p in (ROOT / "llm_pg").rglob("__init__.py")} >= {
        "algorithms", "config", "data", "models", "rollout", "rewards", "runs", "evaluation", "reporting",
        "training", "pipelines"}
    recipes = {f"llm_pg/configs/{p.relative_to(ROOT / 'configs')}" for p in (ROOT / "configs").rglob("*.yaml")}
    assert recipes and recipes - wheel_names == set()
    assert "llm_pg/configs/accelerate/cpu.yaml" in wheel_names


@pytest.mark.parametrize("old", sorted(llm_pg.MOVED))
def test_an_old_module_path_hands_on_the_new_module_with_a_deprecation(old):
    new = importlib.import_module(f"llm_pg.{llm_pg.MOVED[old]}")
    sys.modules.pop(f"llm_pg.{old}", None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        alias = importlib.import_module(f"llm_pg.{old}")
    assert any(issubclass(w.category, DeprecationWarning) and f"llm_pg.{llm_pg.MOVED[old]}" in str(w.message)
               for w in caught)
    public = [name for name in vars(new) if not name.startswith("_")]
    assert public and all(getattr(alias, name) is getattr(new, name) for name in public)


@pytest.mark.parametrize("package", sorted(llm_pg.MOVED_INTO_PACKAGE))
def test_an_old_module_that_is_now_a_package_hands_on_its_names(package):
    new = importlib.import_module(f"llm_pg.{llm_pg.MOVED_INTO_PACKAGE[package]}")
    name = next(n for n, value in vars(new).items()
                if not n.startswith("_") and getattr(value, "__module__", None) == new.__name__)
    with pytest.warns(DeprecationWarning, match=f"llm_pg.{package}.{name} moved"):
        assert getattr(importlib.import_module(f"llm_pg.{package}"), name) is getattr(new, name)


def test_the_public_api_and_the_config_face_need_no_deprecated_path():
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        for name in llm_pg.__all__:
            assert getattr(llm_pg, name) is not None
        from llm_pg.config import TrainConfig, load_config  # noqa: F401  (the documented path stays)


def test_checking_a_reward_config_imports_no_metric_library():
    """The reward registry is lazy: rewards.spec checks a config without sacrebleu, rouge-score or torch, and
    REWARDS is built on first use."""
    code = ("import sys\nfrom llm_pg.config.schema import RewardConfig\nfrom llm_pg.rewards.spec import check_reward_config\n"
            "check_reward_config(RewardConfig([{'name': 'rougeL', 'weight': 1.0}, {'name': 'bleu', 'weight': 0.5}]))\n"
            "print(sorted(m for m in ('sacrebleu', 'rouge_score', 'torch') if m in sys.modules))\n"
            "from llm_pg.rewards import REWARDS\nprint(sorted(REWARDS)[0], 'sacrebleu' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split("\n")
    assert out[0] == "[]"
    assert out[1] == "bleu True"


@pytest.mark.parametrize("old", sorted(llm_pg.SPLIT))
def test_an_old_module_whose_names_went_to_two_places_hands_on_both(old):
    """resume_config's run-folder half is runs/resume.py, rm_model's saving is training/reward_model.py, rm_eval's
    report is reporting/rm_report.py: the flat alias finds a name in either place."""
    second = importlib.import_module(f"llm_pg.{llm_pg.SPLIT[old]}")
    sys.modules.pop(f"llm_pg.{old}", None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        alias = importlib.import_module(f"llm_pg.{old}")
    own = [n for n, v in vars(second).items()
           if not n.startswith("_") and getattr(v, "__module__", "") == second.__name__]
    assert own and all(getattr(alias, name) is getattr(second, name) for name in own)
    with pytest.raises(AttributeError, match="has no attribute 'no_such_name'"):
        alias.no_such_name
