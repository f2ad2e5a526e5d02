"""How sure a difference between two models is: saved photo scores compared on the held-out cases, with intervals
from resampling source groups.

    python -m evaluation.compare --model weights/model.pt --model checkpoints/arm/model.pt \
        v4=data/v4-scores.json arm=data/arm-scores.json

An ablation's arms are scored on the same cases (`evaluation.evaluate --save-scores`), but the held-out test has
only 25 source groups, and photos of one source fail together: a 0.004 lead in AUROC may be one group's luck.
Resampling the groups with replacement (a cluster bootstrap) gives each model's AUROC and right (balanced, at its
own P > 0.5) a 95% interval, and each model's difference from the first one a paired interval: the same draws
of groups for every model. The cases are the held-out groups of every model given (`--model`: none of them
learnt from or was calibrated on a photo of those groups), clean and visible damage (severities 3-5); `--groups`
keeps some of them only (the groups an earlier arm was measured on, or those added after a decision was made).
Models whose operating points differ are compared at one with `--flagged`: the damage each catches above the score
that flags that share of the held-out clean cases themselves (post hoc: a comparison, never a way to choose one).
"""

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from detector.corruptions import VISIBLE_SEVERITIES
from detector.model import is_corrupted
from evaluation.metrics import BOOTSTRAP_DRAWS, INTERVAL_LEVEL, auroc_and_right, group_bootstrap, interval
from evaluation.photo_eval import HELD_OUT, CaseSet, PhotoCase, model_photos, photo_sources, threshold_at_clean_fpr
from training.corpus import SPLITS, load_built


def caught_at_flagged(labels: np.ndarray, values: np.ndarray, share: float) -> float:
    """The share of damaged cases scored above the score that flags `share` of the clean cases."""
    return float(np.mean(values[labels == 1] > threshold_at_clean_fpr(values[labels == 0], share)))


def compare(
    cases: Sequence[PhotoCase],
    groups: Sequence[str],
    scores: dict[str, dict[str, float]],
    draws: int,
    shares_flagged: Sequence[float] = (),
) -> dict[str, dict]:
    """Each model's AUROC and right (at the API's decision) with intervals, its paired difference from the first
    model's (every model is resampled with the same draws of groups), and the damage it catches at each of
    `shares_flagged` of the clean cases."""
    labels = np.array([case.label for case in cases])
    results, reference = {}, None
    for name, score in scores.items():
        values = np.array([score[case.id] for case in cases])
        flagged = is_corrupted(values)
        drawn = group_bootstrap(labels, values, flagged, groups, draws)
        reference = drawn if reference is None else reference
        difference = drawn - reference
        auroc, right = auroc_and_right(labels, values, flagged)
        results[name] = {
            "auroc": auroc,
            "auroc_interval": interval(drawn[:, 0]),
            "right": right,
            "right_interval": interval(drawn[:, 1]),
            "auroc_difference_interval": interval(difference[:, 0]),
            "right_difference_interval": interval(difference[:, 1]),
            "auroc_ahead_share": float(np.mean(difference[np.isfinite(difference[:, 0]), 0] > 0)),
            "caught_at_flagged": {share: caught_at_flagged(labels, values, share) for share in shares_flagged},
        }
    return results


def held_out_cases(
    cases_folder: Path, photos: Path, models: Sequence[Path], groups: Sequence[str] | None = None
) -> tuple[list[PhotoCase], list[str]]:
    """The clean and visible-damage cases of the groups no model given saw (of `groups` only, where given), and
    each case's group."""
    corpus = [photo for split in SPLITS for photo in load_built(photos, split)]
    sources = [photo_sources(corpus, model_photos(model, corpus)) for model in models]
    chosen = [
        case
        for case in CaseSet(cases_folder).cases()
        if (case.label == 0 or case.severity in VISIBLE_SEVERITIES)
        and all(source[case.photo].seen == HELD_OUT for source in sources)
        and (groups is None or sources[0][case.photo].group in groups)
    ]
    return chosen, [sources[0][case.photo].group for case in chosen]


def table(results: dict[str, dict], groups: int, cases: int, draws: int) -> str:
    """The comparison as a Markdown table."""
    first = next(iter(results))
    lines = [
        f"{cases} held-out cases of {groups} source groups; {INTERVAL_LEVEL:.0%} intervals, {draws} group resamples",
        "",
        f"| model | AUROC | right (balanced) | AUROC minus {first}'s | right minus {first}'s | draws AUROC ahead |",
        "|---|---|---|---|---|---:|",
    ]
    for name, r in results.items():
        lines.append(
            f"| {name} | {r['auroc']:.3f} ({r['auroc_interval'][0]:.3f}-{r['auroc_interval'][1]:.3f}) "
            f"| {r['right']:.1%} ({r['right_interval'][0]:.1%}-{r['right_interval'][1]:.1%}) "
            f"| {r['auroc_difference_interval'][0]:+.3f} to {r['auroc_difference_interval'][1]:+.3f} "
            f"| {r['right_difference_interval'][0]:+.1%} to {r['right_difference_interval'][1]:+.1%} "
            f"| {r['auroc_ahead_share']:.0%} |"
        )
    shares = list(results[first]["caught_at_flagged"])
    if shares:
        lines += [
            "",
            "Visible damage caught at the same share of held-out clean cases flagged (post hoc: comparison only)",
            "",
            "| model | " + " | ".join(f"{share:.1%} flagged" for share in shares) + " |",
            "|---|" + "---:|" * len(shares),
        ]
        for name, r in results.items():
            lines.append(f"| {name} | " + " | ".join(f"{r['caught_at_flagged'][s]:.1%}" for s in shares) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scores", nargs="+", help="NAME=FILE.json (evaluate --save-scores); the first is the reference")
    parser.add_argument(
        "--model", type=Path, action="append", required=True, help="a compared checkpoint (repeat): what it saw"
    )
    parser.add_argument("--cases", type=Path, default=Path("data/eval-cases/test"), help="the scored case folder")
    parser.add_argument("--photos", type=Path, default=Path("data/photos"), help="the corpus (make photos)")
    parser.add_argument("--draws", type=int, default=BOOTSTRAP_DRAWS)
    parser.add_argument("--groups", nargs="+", default=None, help="compare on these held-out source groups only")
    parser.add_argument(
        "--flagged", type=float, nargs="+", default=(), help="also: damage caught where this share of clean is flagged"
    )
    args = parser.parse_args(argv)
    cases, groups = held_out_cases(args.cases, args.photos, args.model, args.groups)
    if not cases:
        parser.error("no held-out cases to compare: every group asked for was seen by a model, or has no cases")
    scores = {name: json.loads(Path(file).read_text()) for name, file in (spec.split("=", 1) for spec in args.scores)}
    results = compare(cases, groups, scores, args.draws, args.flagged)
    print(table(results, len(set(groups)), len(cases), args.draws))


if __name__ == "__main__":
    main()
