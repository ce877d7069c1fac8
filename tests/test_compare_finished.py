"""When `llm-pg compare` counts a run as finished (llm_pg/pipelines/compare.py `finished`): both evaluations and,
unless the run's config said not to save it, final/. A run that stopped after eval_after.json but before final/
was complete (a full disk did this once) must be resumed, not skipped."""

from __future__ import annotations

import yaml

from llm_pg.pipelines.compare import finished


def _run(folder, *, evals=("eval_before", "eval_after"), final=True, save_final_model=True):
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump({"training": {"save_final_model": save_final_model}}))
    for name in evals:
        (folder / f"{name}.json").write_text("{}")
    if final:
        (folder / "final").mkdir()
        (folder / "final" / "config.json").write_text("{}")
    return folder


def test_a_run_with_both_evaluations_and_final_is_finished(tmp_path):
    assert finished(_run(tmp_path / "run"))


def test_a_run_without_final_is_not_finished(tmp_path):
    assert not finished(_run(tmp_path / "run", final=False))


def test_a_final_folder_without_its_config_is_an_interrupted_save(tmp_path):
    run = _run(tmp_path / "run")
    (run / "final" / "config.json").unlink()
    assert not finished(run)


def test_a_run_told_not_to_save_final_is_finished_without_it(tmp_path):
    assert finished(_run(tmp_path / "run", final=False, save_final_model=False))


def test_a_missing_evaluation_is_never_finished(tmp_path):
    assert not finished(_run(tmp_path / "a", evals=("eval_before",)))
    assert not finished(_run(tmp_path / "b", evals=("eval_after",), save_final_model=False))
