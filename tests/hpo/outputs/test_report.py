"""``report.html`` (hpo.outputs.report): contents, the CLI, and the page rendered in headless
Chromium."""

from __future__ import annotations

import re
from pathlib import Path

import optuna
import pytest

from hpo.outputs import report
from hpo.outputs.dashboard import storage_url
from tests.hpo.outputs.test_artifacts import make_finished_study
from tests.hpo.outputs.test_dashboard import chromium_page, save_screenshot

N_FIGURES = len(report.FIGURES)


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> tuple[optuna.Study, Path]:
    """A finished study and its report.html, written once for the module."""
    study_dir = tmp_path_factory.mktemp("runs") / "report-study"
    study = make_finished_study(study_dir)
    assert report.write_report(study, study_dir) == study_dir / "report.html"
    return study, study_dir / "report.html"


def test_report_is_self_contained_with_every_figure(written) -> None:
    study, path = written
    page = path.read_text(encoding="utf-8")
    assert page.count('class="plotly-graph-div"') == N_FIGURES
    assert "Not shown" not in page
    assert page.count("Plotly.newPlot") == N_FIGURES
    # plotly.js is inlined once, and nothing is fetched from elsewhere.
    assert not re.search(r"<script[^>]+src=", page)
    markup = re.sub(r"<script.*?</script>", "", page, flags=re.S)  # plotly.js names URLs
    assert not re.search(r"""(src|href)=["']https?://""", markup)
    assert len(re.findall(r'<img id="(best|baseline)-grid"[^>]+src="data:image/png;base64,',
                          page)) == 2
    assert f"best: trial {study.best_trial.number}, step " in page
    assert "CPU-seconds" in page and "GPU-seconds" not in page  # honest: a CPU-only study
    assert "TrialDiverged" in page  # the trials table shows why a trial failed


def test_history_stars_the_confirmed_winner_not_the_search_best() -> None:
    """Optuna's best-value line follows the search; the star marks what best.yaml exports."""
    from tests.hpo.verdict.test_winner import confirm, make_study

    study = make_study({0: 20.0, 1: 23.0, 2: 22.0})

    def star(fig):
        (trace,) = [t for t in fig.data if t.marker.symbol == "star"]
        return trace.x[0], trace.name

    assert star(report.history_figure(study)) == (1, "winner: trial 1")
    confirm(study, {1: [20.0, 21.0, 22.0], 2: [21.0, 22.5, 23.5]}, top_k=2)
    assert star(report.history_figure(study)) == (
        2, "winner: trial 2 (confirmed on fresh seeds)")


def test_cost_axis_uses_gpu_seconds_when_a_gpu_was_used() -> None:
    study = optuna.create_study(direction="maximize")
    for gpu in (0.0, 12.5):
        trial = study.ask()
        trial.set_user_attr("gpu_seconds", gpu)
        trial.set_user_attr("cpu_seconds", 40.0)
        study.tell(trial, 1.0)
    assert report.cost_axis(study.trials)[0] == "gpu_seconds"
    assert report.cost_axis(study.trials[:1])[0] == "cpu_seconds"


def test_prompts_come_from_the_study_or_the_sweep_file(written, tmp_path: Path) -> None:
    study, _ = written
    assert report.study_prompts(study) == study.user_attrs["prompts"]
    prompts = tmp_path / "p.txt"
    prompts.write_text("# held out\na red car\n\na blue van\n", encoding="utf-8")
    other = optuna.create_study()
    other.set_user_attr("sweep_yaml", f"eval:\n  prompts: {prompts}\n")
    assert report.study_prompts(other) == ["a red car", "a blue van"]
    other.set_user_attr("sweep_yaml", "eval:\n  prompts: /nowhere.txt\n")
    assert report.study_prompts(other) == []


def test_report_of_a_study_without_trials_still_writes(tmp_path: Path) -> None:
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'optuna.db'}",
                                study_name=tmp_path.name, direction="maximize")
    page = report.write_report(study, tmp_path).read_text(encoding="utf-8")
    assert "Not shown" in page and "No image grids found" in page


def test_cli_writes_the_report(written, tmp_path: Path,
                               capsys: pytest.CaptureFixture) -> None:
    _, path = written
    out = tmp_path / "again.html"
    assert report.main([str(path.parent), "-o", str(out)]) == 0
    assert out.is_file() and str(out) in capsys.readouterr().out
    assert report.main([str(tmp_path / "missing")]) == 2
    assert "no study database" in capsys.readouterr().err
    assert storage_url(path.parent).startswith("sqlite:///")


def test_report_renders_in_chromium_without_errors(written, tmp_path: Path) -> None:
    """Every plotly figure draws (SVG present), both image grids load, no JS errors, and the
    page makes no request beyond itself."""
    study, path = written
    with chromium_page(tmp_path / "profile") as (page, errors):
        requests: list[str] = []
        page.on("request", lambda req: requests.append(req.url))
        page.goto(path.resolve().as_uri())
        page.wait_for_function(
            "n => { const plots = document.querySelectorAll('.js-plotly-plot');"
            " return plots.length === n && Array.from(plots).every("
            " p => p.querySelector('svg.main-svg') && p._fullData && p._fullData.length); }",
            arg=N_FIGURES)
        drawn = page.evaluate(
            "() => Array.from(document.querySelectorAll('section.figure')).map(s =>"
            " [s.dataset.title, s.querySelectorAll('.js-plotly-plot .trace, .hm image').length])")
        assert [title for title, _ in drawn] == [title for title, _, _ in report.FIGURES]
        assert all(marks > 0 for _, marks in drawn), drawn  # something drawn in each plot
        sizes = page.evaluate("() => Array.from(document.querySelectorAll('img')).map("
                              " i => [i.id, i.complete && i.naturalWidth])")
        assert sorted(sizes) == [["baseline-grid", 128], ["best-grid", 128]]
        assert page.locator("table.trials tbody tr").count() == len(study.trials)
        save_screenshot(page, "report.png", full_page=True)
    assert errors == []
    assert all(url.startswith(("file:", "data:")) for url in requests), requests


def test_star_label_grows_away_from_the_nearer_edge() -> None:
    from tests.hpo.verdict.test_winner import make_study

    def side(scores):
        fig = report.history_figure(make_study(scores))
        (trace,) = [t for t in fig.data if t.marker.symbol == "star"]
        return trace.textposition

    assert side({0: 20.0, 1: 23.0, 2: 22.0, 3: 21.0}) == "top right"  # trial 1: left half
    assert side({0: 20.0, 1: 21.0, 2: 22.0, 3: 23.0}) == "top left"  # trial 3: right edge


def test_importances_of_a_maximized_first_objective_rank_what_makes_it_high(
        monkeypatch) -> None:
    """Optuna's PED-ANOVA takes a custom target as lower-is-better, so a maximized first
    objective is given to it negated (and a minimized one as it is)."""
    seen = {}

    def capture(study, target=None, target_name=""):
        seen["target"] = target
        return None

    monkeypatch.setattr(optuna.visualization, "plot_param_importances", capture)
    for direction, sign in (("maximize", -1.0), ("minimize", 1.0)):
        study = optuna.create_study(directions=[direction, "maximize"])
        study.add_trial(optuna.trial.create_trial(
            values=[3.0, 1.0], params={"x": 1.0},
            distributions={"x": optuna.distributions.FloatDistribution(0, 2)}))
        report.importance_figure(study)
        assert seen["target"](study.trials[0]) == sign * 3.0
