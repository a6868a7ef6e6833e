"""Several objectives: the sweep file, the multi-objective study, pareto/*.yaml, the report."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from hpo.run import main as run_main
from hpo.sweep.objectives import Objective, Select
from hpo.sweep.spec import load_sweep
from hpo.verdict.winner import best_trial
from tests.sweep_files import REPO, apply, short_prompts

PARETO = REPO / "sweeps" / "tiny_pareto.yaml"


def pareto_doc(folder: Path, **changes) -> Path:
    doc = yaml.safe_load(PARETO.read_text(encoding="utf-8"))
    apply(doc, {"data.train_dir": str(folder / "data"),
                "eval.prompts": str(short_prompts(folder)), **changes})
    path = folder / "pareto.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return path


def test_the_shipped_pareto_sweep_has_two_objectives_and_a_rule() -> None:
    sweep = load_sweep(PARETO)
    assert sweep.objectives == (Objective("clip_score", "maximize"),
                                Objective("dino_holdout", "maximize"))
    assert sweep.multi_objective and sweep.metric == "clip_score"
    assert sweep.select == Select("first") and sweep.data.holdout == 3
    assert sweep.confirm.top_k == 3 and sweep.confirm.seed == 4321


@pytest.mark.parametrize(("changes", "message"), [
    ({"data.holdout": 0},
     "metric: dino_holdout needs held-out real images: set data.holdout"),
    ({"select": {"rule": "weighted", "weights": [1.0]}},
     "select.weights: must list one number per objective (2) (got 1)"),
    ({"select": {"rule": "first", "weights": [1, 1]}}, "select.weights: only rule weighted"),
    ({"confirm.seed": 1234}, "confirm.seed: must differ from eval.seed (1234)"),
    ({"metric": [{"name": "clip_score"}, {"name": "clip_score"}]},
     "metric[1].name: names 'clip_score' twice"),
    ({"metric": [{"name": "clip_score"}], "method": "nsga2"}, "method: nsga2 is for several"),
    ({"metric": [{"name": "clip_score"}, {"name": "leak", "goal": "minimize"}]},
     "metric: leak needs control prompts: set preservation.trigger"),
])
def test_mistakes_in_objectives_are_one_line(tmp_path: Path, changes, message) -> None:
    from trials.validation import ConfigError

    with pytest.raises(ConfigError) as info:
        load_sweep(pareto_doc(tmp_path, **changes))
    assert message in str(info.value)


def test_brand_against_preservation_is_a_pareto_sweep(tmp_path: Path) -> None:
    sweep = load_sweep(pareto_doc(tmp_path, **{
        "metric": [{"name": "clip_score"}, {"name": "leak", "goal": "minimize"}],
        "preservation": {"trigger": "Hyundai"}, "eval.prompts": "sweeps/prompts/tiny_heldout.txt"}))
    assert sweep.objectives == (Objective("clip_score"), Objective("leak", "minimize"))
    assert sweep.preservation.measured and sweep.multi_objective


def test_weighted_rule_scores_by_signed_weights() -> None:
    objs = (Objective("clip_score"), Objective("clip_i", "minimize"))
    rule = Select("weighted", (1.0, 0.5))
    assert rule.score(objs, {"clip_score": 30.0, "clip_i": 10.0}) == pytest.approx(25.0)
    assert rule.score(objs, {"clip_score": 30.0}) is None


@pytest.mark.slow
def test_pareto_sweep_writes_a_two_objective_study_front_files_and_plot(
        ray_cluster, tmp_path: Path) -> None:
    sweep = pareto_doc(tmp_path, **{"parameters.max_train_steps": {"values": [10, 20]},
                                    "confirm.images_per_prompt": 1,
                                    "eval.images_per_prompt": 1})
    out = tmp_path / "runs"
    assert run_main(["--sweep", str(sweep), "--trials", "8", "--out", str(out),
                     "--address", ray_cluster]) == 0
    study = optuna.load_study(study_name="tiny-pareto",
                              storage=f"sqlite:///{out / 'tiny-pareto' / 'optuna.db'}")
    assert len(study.directions) == 2
    assert study.metric_names == ["clip_score", "dino_holdout"]
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert complete and len(study.trials) == 8
    for t in complete:  # both values, taken at the best clip_score rung
        assert len(t.values) == 2
        assert t.values[0] == t.user_attrs["score_per_rung"][str(t.user_attrs["best_step"])]
        assert t.values[1] == t.user_attrs["dino_holdout"]
        assert t.user_attrs["clip_i_holdout"] is not None
    attrs = study.user_attrs
    assert attrs["sampler"]["objectives"] == ["clip_score (maximize)", "dino_holdout (maximize)"]
    assert len(attrs["holdout"]["files"]) == 3
    front = {t.number for t in study.best_trials}
    folder = out / "tiny-pareto"
    files = {p.name for p in (folder / "pareto").glob("*.yaml")}
    assert files == {f"trial-{n}.yaml" for n in front}
    for n in front:
        doc = yaml.safe_load((folder / "pareto" / f"trial-{n}.yaml").read_text())
        assert doc["result"]["trial"] == n and doc["result"]["pareto_optimal"]
        assert set(doc["result"]["objectives"]) == {"clip_score", "dino_holdout"}
    best = yaml.safe_load((folder / "best.yaml").read_text())
    winner = best_trial(study)
    assert best["result"]["trial"] == winner.number and winner.number in front
    assert best["result"]["confirmation"]["winner"] == winner.number
    page = (folder / "report.html").read_text(encoding="utf-8")
    assert 'data-title="Pareto front"' in page and 'id="pareto-plot"' in page
    assert page.count('class="pareto-trial"') == len(front)


def test_front_files_and_report_plot_from_a_two_objective_study(tmp_path: Path) -> None:
    """Without Ray: a two-objective study as the recorder leaves it -> pareto/*.yaml, report."""
    from hpo.outputs import pareto, report
    from hpo.study import storage as studies
    from hpo.sweep.space import define_by_run, sampler_settings
    from trials.data.synthetic import ensure_dataset

    sweep = load_sweep(pareto_doc(tmp_path))
    ensure_dataset(sweep.data)  # the held-out split is recorded from the folder
    study_dir = tmp_path / "runs" / "tiny-pareto"
    study_dir.mkdir(parents=True)
    study = studies.open_study(studies.open_storage(studies.default_storage_url(study_dir)),
                               sweep, "tiny-pareto")
    studies.record_study_attrs(study, sweep, sampler_settings(sweep))
    space = define_by_run(sweep)
    for values in ([24.0, 90.0], [23.0, 95.0], [22.0, 89.0]):  # the third is dominated
        trial = study.ask()
        space(trial)
        trial.set_user_attr("best_step", 20)
        trial.set_user_attr("score_per_rung", {"20": values[0]})
        study.tell(trial, values)
    assert [t.values for t in study.trials][1] == [23.0, 95.0]  # both values recorded
    written = pareto.write_pareto_files(sweep, study, study_dir, "sqlite", None)
    assert sorted(p.name for p in written) == ["trial-0.yaml", "trial-1.yaml"]
    doc = yaml.safe_load((study_dir / "pareto" / "trial-1.yaml").read_text())
    assert doc["result"]["objectives"] == {"clip_score": 23.0, "dino_holdout": 95.0}
    assert best_trial(study).number == 0  # rule first: the front's best clip_score
    page = report.write_report(study, study_dir).read_text(encoding="utf-8")
    assert 'data-title="Pareto front"' in page and 'id="pareto-plot"' in page
    assert page.count('class="pareto-trial"') == 2
