"""The Summary at the top of BENCHMARKS.md is rebuilt from results.json, so it always tells the
latest recorded figures (issue 23: it still quoted the random-weight world's 1.35x, 77 s and
58 % above the toy-world sections)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import benchmarks.common as common
from benchmarks.summary import BEGIN, END, summary_section, with_summary

RUN = {"date": "2026-11-30 22:58 UTC", "git_commit": "07ba0cf6a4+dirty",
       "load_average_at_start": [0.4], "load_average_at_end": [2.0]}


def results() -> dict[str, Any]:
    trainer_run = {**RUN, "date": "2026-11-30 19:56 UTC", "git_commit": "e82dade8b9"}
    return {
        "trainer": {"fused_sps": 21.67, "reference_sps": 9.96, "run": trainer_run},
        "trainer_vs_reference": 2.1757, "fused_vs_sequential": 1.296,
        "eval": {"measured_on": "pretrained toy world", "run": RUN,
                 "floor": {"unet_only": 0.7038}},
        "eval_share": 0.7716,
        "sweeps": {"trials": 20, "run": RUN, "asha_same_winner_within_stderr": True},
        "asha_compute_fraction": 0.6447, "asha_work_fraction": 0.6924,
        "asha_ideal_fraction": 0.6308, "steps_fidelity_compute_fraction": 0.5342,
        "demo_wall_seconds": 223.96, "demo_peak_rss_mb": 4170.4, "overhead_median_seconds": 0.4816,
        "search_pipeline": {"configurations": 72, "seeds": 20, "n_trials": 20,
                            "date": "2026-11-30 20:17 UTC", "git_commit": "e82dade8b9",
                            "methods": {"tpe": {"20": {"median_regret": 0.0}},
                                        "random": {"20": {"median_regret": 2.38}}}},
        "winners_curse": {"runs": [{}, {}, {}], "mean_curse": 0.4458, "sd_curse": 1.1688,
                          "date": "2026-11-30 19:55 UTC", "git_commit": "aedaaf27ba"},
    }


def test_every_recorded_figure_with_its_target_and_where_it_was_measured() -> None:
    text = summary_section(results())
    assert text.startswith(BEGIN + "\n## Summary\n") and text.endswith(END + "\n")
    assert ("| trainer vs the real `train_text_to_image_lora.py` | **2.18x** (21.67 vs 9.96 "
            "samples/s, tiny SD model, CPU) | >= 2x: met | 2026-11-30 19:56 UTC, git e82dade;"
            " section Speed |") in text
    assert "| **77 %**; 70 % if a rung cost only its UNet passes | <= 25 %: **missed** " \
           "(floor 70 %: see section Speed) | 2026-11-30 22:58 UTC, git 07ba0cf+dirty;" in text
    assert "**64 %** of the CPU-seconds; 69 % counted in work (ideal successive halving 63 %)" \
           "; same winner within paired stderr | <= 50 %: **missed** (floor 63 %)" in text
    assert "| **53 %** of the compute to reach the dimension arm's best | <= 60 %: met" in text
    assert "**224 s** wall, peak RSS 4170 MB (process tree), **0.48 s** overhead per trial " \
           "(median) | < 5 min: met; <= 2 s per trial: met" in text
    assert "median regret after 20 trials (CLIP-T points): tpe 0.00, random 2.38 |" in text
    assert "search minus confirmed score +0.45 (sd 1.17) CLIP-T points" in text
    assert "1.35x" not in text


def test_missing_figures_leave_no_row_and_run_sections_are_pointed_to() -> None:
    markdown = ("# Benchmarks\n\nWritten by `python -m benchmarks.run --quick` (`--quick` "
                "settings) on 2026-11-25 19:11 UTC. The whole run took 6.9 min.\n")
    text = summary_section({"eval_share": 0.3}, markdown)
    assert "| figure |" not in text and "Nothing is recorded" in text
    assert "Sections 1-6 (`python -m benchmarks.run`) were last written on 2026-11-25 19:11 " \
           "UTC and keep their own table" in text


def test_the_summary_goes_under_the_title_once_and_is_replaced_in_place() -> None:
    body = "# Benchmarks\n\n## 1. Throughput\n\nfigures\n"
    once = with_summary(body, results())
    assert once.startswith("# Benchmarks\n\n" + BEGIN) and once.endswith("## 1. Throughput\n\n"
                                                                          "figures\n")
    assert with_summary(once, results()) == once  # idempotent
    changed = with_summary(once, {**results(), "trainer_vs_reference": 3.0})
    assert "**3.00x**" in changed and changed.count(BEGIN) == 1 and "**2.18x**" not in changed


def test_any_benchmark_writing_its_section_rebuilds_the_summary(tmp_path: Path,
                                                                monkeypatch) -> None:
    markdown, recorded = tmp_path / "BENCHMARKS.md", tmp_path / "results.json"
    monkeypatch.setattr(common, "MARKDOWN", markdown)
    monkeypatch.setattr(common, "RESULTS", recorded)
    markdown.write_text("# Benchmarks\n\n## 1. Throughput\n\nold run\n")
    recorded.write_text(json.dumps(results()))
    common.write_section("<!-- speed:begin -->", "<!-- speed:end -->",
                         "<!-- speed:begin -->\n## Speed\n<!-- speed:end -->\n")
    text = markdown.read_text()
    assert text.index(BEGIN) < text.index("## 1. Throughput") < text.index("## Speed")
    assert "**2.18x**" in text
    recorded.write_text(json.dumps({**results(), "eval_share": 0.2}))
    common.write_section("<!-- winners-curse:begin -->", "<!-- winners-curse:end -->",
                         "<!-- winners-curse:begin -->\n## Curse\n<!-- winners-curse:end -->\n")
    text = markdown.read_text()
    assert "**20 %**" in text and "<= 25 %: met" in text and text.count(BEGIN) == 1
    assert common.marked_sections(text) == ("<!-- speed:begin -->\n## Speed\n<!-- speed:end -->\n"
                                            "<!-- winners-curse:begin -->\n## Curse\n"
                                            "<!-- winners-curse:end -->\n")
