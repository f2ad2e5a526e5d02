"""Two models' saved scores compared on held-out cases, with intervals from resampling whole source groups."""

import json

import numpy as np
import pytest

from detector.model import is_corrupted
from evaluation.compare import caught_at_flagged, compare, main, table
from evaluation.metrics import group_resamples
from evaluation.photo_eval import HELD_OUT, Scorer, Source, part_figures
from evaluation.report import number, percent, with_interval
from tests.test_photo_eval import case, index_cases

GROUPS = ("a", "b", "c", "d")


def cases_of(groups: tuple[str, ...], per_group: int = 6) -> tuple[list, list[str]]:
    """`per_group` clean and as many damaged cases in each group, and each case's group."""
    cases, names = [], []
    for group in groups:
        for i in range(per_group):
            cases += [case(f"{group}{i}c", 0, photo=group), case(f"{group}{i}d", 1, "blur", 3, photo=group)]
            names += [group, group]
    return cases, names


def noisy_scores(cases: list, seed: int, separation: float) -> dict[str, float]:
    """Scores in (0, 1), damaged cases higher by `separation` on average, with per-group offsets."""
    rng = np.random.default_rng(seed)
    offsets = {group: rng.normal(0, 0.1) for group in GROUPS}
    return {
        c.id: float(np.clip(0.4 + separation * c.label + offsets[c.photo] + rng.normal(0, 0.15), 0, 1)) for c in cases
    }


def test_a_draw_takes_every_case_of_the_groups_it_draws():
    _, groups = cases_of(GROUPS, per_group=3)
    for chosen in group_resamples(groups, draws=20):
        assert len(chosen) == len(groups)  # four groups of six cases drawn, with replacement
        drawn = [groups[i] for i in chosen]
        assert all(drawn.count(name) % 6 == 0 for name in set(drawn))


def test_a_model_against_itself_differs_by_nothing():
    cases, groups = cases_of(GROUPS)
    scores = noisy_scores(cases, 0, 0.3)
    results = compare(cases, groups, {"a": scores, "same": dict(scores)}, draws=200)
    assert results["same"]["auroc_difference_interval"] == (0.0, 0.0)
    assert results["same"]["right_difference_interval"] == (0.0, 0.0)
    assert results["same"]["auroc_ahead_share"] == 0.0


def test_models_are_compared_at_the_same_share_of_clean_cases_flagged():
    labels = np.array([0, 0, 0, 0, 0, 1, 1])
    values = np.array([0.1, 0.2, 0.3, 0.4, 0.9, 0.35, 0.5])
    assert caught_at_flagged(labels, values, 0.2) == 0.0  # above 0.5 (interpolated): one clean case in five
    assert caught_at_flagged(labels, values, 0.4) == 1.0  # above 0.34: two in five
    cases, groups = cases_of(GROUPS)
    weak, strong = noisy_scores(cases, 1, 0.1), noisy_scores(cases, 1, 0.5)
    results = compare(cases, groups, {"weak": weak, "strong": strong}, draws=20, shares_flagged=(0.05, 0.25))
    assert results["strong"]["caught_at_flagged"][0.05] > results["weak"]["caught_at_flagged"][0.05]
    lines = table(results, len(GROUPS), len(cases), 20).splitlines()
    assert "| model | 5.0% flagged | 25.0% flagged |" in lines


def test_one_group_leaves_nothing_to_resample():
    cases, groups = cases_of(("a",))
    scores = noisy_scores(cases, 0, 0.3)
    result = compare(cases, groups, {"model": scores}, draws=50)["model"]
    assert result["auroc_interval"] == pytest.approx((result["auroc"], result["auroc"]))


def test_a_model_better_on_every_group_is_ahead_in_every_draw():
    cases, groups = cases_of(GROUPS)
    weak, strong = noisy_scores(cases, 1, 0.1), noisy_scores(cases, 1, 0.5)
    result = compare(cases, groups, {"weak": weak, "strong": strong}, draws=200)["strong"]
    assert result["auroc_difference_interval"][0] > 0 and result["auroc_ahead_share"] == 1.0
    assert result["auroc_interval"][0] <= result["auroc"] <= result["auroc_interval"][1]


def test_the_command_compares_only_groups_no_model_saw(trained, mini_corpus, tmp_path, capsys):
    """The mini corpus's model learnt from scikit-image and was calibrated on scikit-learn: only matplotlib's
    cases count, clean and visible damage alike; a seen photo's and a subtle one's are left out, and `--groups`
    cannot bring a seen group back."""
    held_out = [
        case("h-clean", 0, photo="matplotlib--grace-hopper"),
        case("h-blur", 1, "blur", 4, photo="matplotlib--grace-hopper"),
    ]
    left_out = [case("seen", 1, "blur", 4, photo="scikit-image--coffee")]
    subtle = [case("subtle", 1, "blur", 1, photo="matplotlib--grace-hopper")]
    listed = held_out + left_out + subtle
    scores = {c.id: 0.9 * c.label for c in listed}
    (tmp_path / "s.json").write_text(json.dumps(scores))
    model, cases = str(trained / "model.pt"), str(index_cases(tmp_path / "cases", listed))
    arguments = ["--cases", cases, "--photos", str(mini_corpus), "--model", model, f"m={tmp_path}/s.json"]
    main(arguments)
    output = capsys.readouterr().out
    assert "2 held-out cases of 1 source groups; 95% intervals" in output
    assert "| m | 1.000 (1.000-1.000) | 100.0% (100.0%-100.0%) |" in output
    main([*arguments, "--groups", "matplotlib", "scikit-image"])  # the held-out group kept, the seen one still out
    assert "2 held-out cases of 1 source groups" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main([*arguments, "--groups", "scikit-image"])
    assert "no held-out cases to compare" in capsys.readouterr().err


def test_the_reports_headline_figures_carry_intervals_over_source_groups():
    cases, _ = cases_of(GROUPS)
    sources = {group: Source(group, (), "test", HELD_OUT) for group in GROUPS}
    scorer = Scorer("detector", noisy_scores(cases, 2, 0.3), is_corrupted)
    figures = part_figures(cases, scorer, sources)
    low, high = figures["auroc_all_interval"]
    assert low < figures["auroc_all"] < high and high - low > 0.01  # four groups: a real spread
    low, high = figures["balanced_accuracy_interval"]
    assert low <= figures["balanced_accuracy"] <= high
    assert with_interval(0.846, (0.821, 0.87), percent) == "84.6% (82.1%-87.0%)"
    assert with_interval(0.959, None, number) == "0.959"  # a results file from before intervals
    one = part_figures(cases[:12], scorer, sources)  # group "a" alone: nothing to resample
    assert one["auroc_all_interval"] == pytest.approx((one["auroc_all"],) * 2)
