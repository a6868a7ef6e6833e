"""Racing decisions: the one-sided paired tests against scipy, and the rung references."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from hpo.sweep.racing import Racing
from hpo.verdict.racing import RungReferences, one_sided_p

RACING = Racing(chunk=4, min_prompts=8, test="t", level=0.01)


def test_the_t_test_is_scipys_one_sided_paired_test() -> None:
    rng = np.random.default_rng(0)
    ref = rng.normal(50, 10, 24)
    trial = ref - 3 + rng.normal(0, 2, 24)
    expected = stats.ttest_rel(trial, ref, alternative="less").pvalue
    assert one_sided_p(trial - ref, "t") == pytest.approx(expected, rel=1e-12)
    # and by hand: t = mean / (sd / sqrt(n)), p = F_{n-1}(t)
    d = trial - ref
    t = d.mean() / (d.std(ddof=1) / np.sqrt(d.size))
    assert one_sided_p(d, "t") == pytest.approx(stats.t.cdf(t, d.size - 1), rel=1e-9)


def test_the_wilcoxon_test_is_scipys_signed_rank_test() -> None:
    d = np.array([-3.0, -1.5, 0.4, -2.2, -0.7, -4.1, 1.1, -2.5, -0.3, -1.9])
    assert one_sided_p(d, "wilcoxon") == pytest.approx(
        stats.wilcoxon(d, alternative="less").pvalue, rel=1e-12)


def test_degenerate_differences() -> None:
    assert one_sided_p([-2.0] * 6, "t") == 0.0   # the same loss on every prompt: clear
    assert one_sided_p([0.0] * 6, "t") == 1.0
    assert one_sided_p([1.0] * 6, "wilcoxon") == 1.0
    assert one_sided_p([-1.0], "t") == 0.0
    assert one_sided_p([], "t") == 1.0
    with pytest.raises(ValueError, match="t or wilcoxon"):
        one_sided_p([1.0, 2.0], "z")


def _scores(rng: np.random.Generator, shift: float, n: int = 24) -> list[float]:
    base = np.linspace(20, 80, n)
    return list(base + shift + rng.normal(0, 1.0, n))


def test_a_rung_without_a_reference_decides_nothing() -> None:
    refs = RungReferences(RACING)
    assert refs.decide(30, list(range(12)), [0.0] * 12) is None


def test_a_clearly_worse_trial_is_stopped_a_close_one_is_not() -> None:
    rng = np.random.default_rng(1)
    refs = RungReferences(RACING)
    refs.record(30, trial=3, per_prompt=_scores(rng, 0.0))
    order = [5, 0, 17, 9, 22, 3, 11, 14, 2, 20, 7, 1]
    worse = _scores(rng, -4.0)
    decision = refs.decide(30, order, [worse[i] for i in order])
    assert decision is not None
    assert decision["reference_trial"] == 3 and decision["n"] == 12
    assert decision["p_value"] < 0.01 and decision["delta"] < -3
    assert decision["test"] == "t" and decision["level"] == 0.01
    assert decision["stderr"] > 0
    same = _scores(rng, 0.0)
    assert refs.decide(30, order, [same[i] for i in order]) is None
    # too few prompts yet: no decision, however bad
    assert refs.decide(30, order[:7], [worse[i] - 50 for i in order[:7]]) is None
    # another rung has no reference
    assert refs.decide(45, order, [worse[i] for i in order]) is None


def test_the_reference_is_the_best_usable_full_record() -> None:
    rng = np.random.default_rng(2)
    refs = RungReferences(RACING)
    refs.record(30, trial=1, per_prompt=_scores(rng, 0.0))
    refs.record(30, trial=2, per_prompt=_scores(rng, 10.0), usable=False)  # breaks the base
    refs.record(30, trial=4, per_prompt=_scores(rng, 5.0))
    refs.record(30, trial=5, per_prompt=_scores(rng, 2.0))  # not better than trial 4
    assert refs.best[30].trial == 4
    # a trial that beats trial 1 but is clearly below trial 4 is raced out against trial 4
    mid = _scores(rng, 1.0)
    decision = refs.decide(30, list(range(10)), mid[:10])
    assert decision is not None and decision["reference_trial"] == 4


def test_the_cutoff_reference_is_ashas_quantile_rounded_toward_the_worse_trial() -> None:
    rng = np.random.default_rng(3)
    cutoff = Racing(chunk=4, min_prompts=8, against="cutoff", keep_fraction=0.5)
    refs = RungReferences(cutoff)
    shifts = {0: 0.0, 1: 6.0, 2: 3.0, 3: 9.0, 4: -2.0}
    for trial, shift in shifts.items():
        # trial 3 breaks the base model: never the best, but ASHA counts it
        refs.record(30, trial, _scores(rng, shift), usable=trial != 3)
    scores = sorted(ref.score for ref in refs.records[30])
    quantile = np.nanpercentile(scores, 50)  # ASHA's cutoff with reduction factor 2
    ref = refs.reference(30)
    assert ref is not None and ref.trial == 2 and ref.score == pytest.approx(quantile)
    assert refs.best[30].trial == 1  # the best usable one: what against=best races with
    # a trial between the cutoff and the best goes on against the cutoff ...
    mid = _scores(rng, 4.0)
    assert refs.decide(30, list(range(12)), mid[:12]) is None
    # ... and is raced out against the best
    best = RungReferences(RACING)
    for record in refs.records[30]:
        best.record(30, record.trial, list(record.per_prompt.values()), usable=record.usable)
    assert best.decide(30, list(range(12)), mid[:12])["reference_trial"] == 1
    # below the cutoff it stops, naming the cutoff trial and the rule
    low = _scores(rng, -3.0)
    decision = refs.decide(30, list(range(12)), low[:12])
    assert decision is not None and decision["reference_trial"] == 2
    assert decision["against"] == "cutoff"
    # an even count: the quantile lies between two trials; the worse one is the reference
    refs.record(30, 5, _scores(rng, 4.5))
    assert refs.reference(30).trial == 2  # sorted: 4, 0, 2, 5, 1, 3 -> place floor(2.5)


def test_a_subset_reference_pairs_only_its_own_prompts() -> None:
    refs = RungReferences(RACING)
    refs.record(15, trial=0, per_prompt=[50.0] * 8, prompt_indices=[3, 1, 4, 15, 9, 2, 6, 5])
    assert refs.best[15].per_prompt[15] == 50.0
    # prompts the reference never scored: no pairing, no decision
    assert refs.decide(15, [3, 1, 4, 15, 9, 2, 6, 7], [10.0] * 8) is None
    decision = refs.decide(15, [3, 1, 4, 15, 9, 2, 6, 5], [10.0, 12.0, 9.0, 11.0, 10.0, 13.0,
                                                           8.0, 10.0])
    assert decision is not None and decision["delta"] == pytest.approx(83 / 8 - 50)


def test_racing_counts_its_looks() -> None:
    assert Racing(chunk=8, min_prompts=16).looks(48) == 4  # after 16, 24, 32, 40
    assert Racing(chunk=8, min_prompts=16).looks(16) == 0  # a rung of 16: done at once
    assert Racing(chunk=4, min_prompts=8).looks(10) == 1


def test_raced_trials_count_toward_the_cutoff_as_partial_records() -> None:
    # One early trial far above the rest must not stay the cutoff for ever: ASHA records the
    # trials it stops, so racing records the ones it stops too, with the prompts they drew.
    rng = np.random.default_rng(4)
    cutoff = Racing(chunk=4, min_prompts=8, against="cutoff", keep_fraction=0.5)
    refs = RungReferences(cutoff)
    refs.record(30, 1, _scores(rng, 10.0))  # the early outlier
    low = _scores(rng, -1.0)
    decision = refs.decide(30, list(range(8)), low[:8])  # raced out against it after 8
    assert decision is not None and decision["reference_trial"] == 1
    refs.record(30, 2, low[:8], list(range(8)), usable=False, partial=True)
    ref = refs.reference(30)  # the lower of two records: the raced trial's
    assert ref is not None and ref.partial and ref.trial == 2
    assert refs.best[30].trial == 1  # a partial record is never the best
    # a trial as good as the raced one goes on, paired with it on the 8 prompts both drew
    same = _scores(rng, -1.0)
    assert refs.decide(30, list(range(16)), same[:16]) is None
    # one clearly below it stops, paired on those 8 prompts only
    bad = _scores(rng, -6.0)
    decision = refs.decide(30, list(range(16)), bad[:16])
    assert decision is not None and decision["n"] == 8 and decision["reference_trial"] == 2


def test_against_the_cutoff_a_trials_last_rung_is_never_raced() -> None:
    # ASHA keeps a trial at its last step whatever its score (stopping it saves nothing);
    # racing it there would leave the winner's pool of COMPLETE trials to chance.
    rng = np.random.default_rng(5)
    low = _scores(rng, -5.0)
    for against, keep in (("cutoff", 0.5), ("best", None)):
        refs = RungReferences(Racing(chunk=4, min_prompts=8, against=against,
                                     keep_fraction=keep))
        refs.record(30, 1, _scores(rng, 10.0))
        assert refs.decide(30, list(range(8)), low[:8]) is not None  # a rung before its last
        at_last = refs.decide(30, list(range(8)), low[:8], final=True)
        assert (at_last is None) == (against == "cutoff")  # best: it cannot win, so it stops


def test_against_the_cutoff_only_asha_milestones_are_raced() -> None:
    rng = np.random.default_rng(6)
    cutoff = Racing(chunk=4, min_prompts=8, against="cutoff", keep_fraction=0.5, grace_steps=15)
    assert [s for s in range(1, 130) if cutoff.asha_decides_at(s)] == [15, 30, 60, 120]
    refs = RungReferences(cutoff)
    low = _scores(rng, -5.0)
    for step in (30, 45):
        refs.record(step, 1, _scores(rng, 10.0))
    assert refs.decide(30, list(range(8)), low[:8]) is not None
    assert refs.decide(45, list(range(8)), low[:8]) is None  # ASHA decides nothing at 45
