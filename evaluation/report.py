"""Render evaluation results (evaluation/evaluate.py) as robustness.md, PNG figures and robustness.json."""

import json
import math
from collections.abc import Callable
from pathlib import Path

from matplotlib.figure import Figure
from PIL import Image, ImageDraw, ImageOps

from detector.corruptions import (
    CIFAR_CORRUPTIONS,
    CORRUPTIONS,
    KINDS,
    SEVERITIES,
    TYPES,
    VISIBLE_SEVERITIES,
    VISIBLE_SEVERITY,
)
from evaluation.heldout import HELDOUT_KINDS, NEAREST_TRAINING_KIND
from evaluation.metrics import BOOTSTRAP_DRAWS, INTERVAL_LEVEL
from evaluation.photo_eval import BUCKETS, HELD_OUT

CIFAR_KINDS = tuple(CIFAR_CORRUPTIONS)
PHOTO_FAMILIES = tuple(dict.fromkeys(CORRUPTIONS[kind].family for kind in KINDS))
# How the reports name the visible severities, the targets' ("3-5").
VISIBLE = f"{VISIBLE_SEVERITIES[0]}-{VISIBLE_SEVERITIES[-1]}"
TARGET_PHOTO_FPR = 0.03
TARGET_PHOTO_DETECTION = 0.90
TARGET_PHOTO_ACCURACY = 0.95
PEERS_TO_BEAT = ("laplacian var < 100", "BRISQUE")
TARGET_CIFAR_FPR = 0.03
TARGET_CIFAR_DETECTION = 0.90
TARGET_HELDOUT_AUROC = 0.90
DETECTOR = "detector"
# The contact sheet of clean photos the detector flags, and its thumbnails' size and number.
SHEET = "false_alarms.jpg"
THUMBNAIL = 200
SHEET_COLUMNS = 6
SHEET_LIMIT = 60


def percent(value: float) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.1%}"


def number(value: float) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.3f}"


def with_interval(value: float, bounds: tuple[float, float] | None, show: Callable[[float], str]) -> str:
    """A figure and, where one was measured, its interval over source groups: "84.6% (82.1%-87.0%)"."""
    if bounds is None or any(bound is None or math.isnan(bound) for bound in bounds):
        return show(value)
    return f"{show(value)} ({show(bounds[0])}-{show(bounds[1])})"


def verdict(ok: bool) -> str:
    return "met" if ok else "**not met**"


def worst_clean_fpr(photo: dict) -> tuple[str, float]:
    """The highest clean false-positive rate over size buckets and JPEG qualities, and where it is."""
    cells = {f"{b}, {q}": v for b, qs in photo["clean_fpr_by_bucket_quality"].items() for q, v in qs.items()}
    present = {k: v for k, v in cells.items() if not math.isnan(v)}
    where = max(present, key=present.get)
    return where, present[where]


def photo_targets(photos: dict) -> list[tuple[str, str, bool]]:
    """The photo targets, judged on the sources the model never saw."""
    if photos["held_out"] is None:
        return [("photos: judged on sources the model never saw", "none evaluated", False)]
    photos = photos["held_out"]
    detector = photos["scorers"][DETECTOR]
    where, fpr = worst_clean_fpr(detector)
    visible = detector["detection_visible"]
    weakest = min(PHOTO_FAMILIES, key=lambda f: visible[f])
    rows = [
        (
            f"held-out photos: clean flagged <= {TARGET_PHOTO_FPR:.0%} in every size bucket and at q92 and q80",
            f"worst {percent(fpr)} ({where}); all {percent(detector['clean_fpr'])}",
            fpr <= TARGET_PHOTO_FPR,
        ),
        (
            f"held-out photos: each family detected >= {TARGET_PHOTO_DETECTION:.0%} at severities {VISIBLE}",
            f"lowest: {weakest} {percent(visible[weakest])}",
            visible[weakest] >= TARGET_PHOTO_DETECTION,
        ),
        (
            f"held-out photos: >= {TARGET_PHOTO_ACCURACY:.0%} right (clean and visible damage weighted equally)",
            percent(detector["balanced_accuracy"]),
            detector["balanced_accuracy"] >= TARGET_PHOTO_ACCURACY,
        ),
    ]
    for peer in PEERS_TO_BEAT:
        if peer in photos["side_by_side"]:
            behind = [
                f for f in PHOTO_FAMILIES if not photos["side_by_side"][DETECTOR][f] > photos["side_by_side"][peer][f]
            ]
            rows.append(
                (
                    f"held-out photos: AUROC ahead of {peer} on every family (same cases)",
                    "ahead on all" if not behind else f"behind on {', '.join(behind)}",
                    not behind,
                )
            )
    return rows


def cifar_targets(cifar: dict) -> list[tuple[str, str, bool]]:
    training, heldout = cifar["training_kinds"], cifar["heldout_kinds"]
    fpr = training["clean_false_positive_rate"]
    weakest = min(training["detection_rate_sev3_5"], key=training["detection_rate_sev3_5"].get)
    heldout_auroc = heldout_means(heldout)[0]
    return [
        (f"CIFAR: clean flagged <= {TARGET_CIFAR_FPR:.0%}", percent(fpr), fpr <= TARGET_CIFAR_FPR),
        (
            f"CIFAR: each family detected >= {TARGET_CIFAR_DETECTION:.0%} at severities {VISIBLE}",
            f"lowest: {weakest} {percent(training['detection_rate_sev3_5'][weakest])}",
            training["detection_rate_sev3_5"][weakest] >= TARGET_CIFAR_DETECTION,
        ),
        (
            f"CIFAR-10-C kinds never trained on: mean AUROC >= {TARGET_HELDOUT_AUROC}",
            number(heldout_auroc),
            heldout_auroc >= TARGET_HELDOUT_AUROC,
        ),
    ]


def targets(results: dict) -> list[tuple[str, str, bool]]:
    """(target, measured, met) for each of the detector's targets."""
    photos = photo_targets(results["photos"]) if results["photos"] else []
    return photos + cifar_targets(results["cifar"])


def figures(part: dict) -> str:
    """One part's headline figures, as `make evaluate` prints them and the report opens with them."""
    return (
        f"{part['groups']} source groups, {part['photos']} photos, {part['cases']} images: "
        f"{percent(part['balanced_accuracy'])} right (balanced), clean flagged {percent(part['clean_fpr'])}, "
        f"visible damage caught {percent(part['visible_detection'])}, AUROC {number(part['auroc_all'])}"
    )


def worst_group_line(photos: dict) -> tuple[str, str]:
    """("worst held-out group", ": its name and clean false alarms"), or why there is none."""
    worst = photos["worst_group"]
    if worst is None:
        return "no held-out group has clean photos", ""
    row = photos["groups"][worst]
    flagged = f"clean flagged {percent(row['clean_fpr'])} of {row['clean_cases']} images"
    return "worst held-out group", f": {worst}, {flagged}"


def headline(results: dict) -> str:
    """The numbers a reader wants first, one line each: sources never seen first, seen ones apart."""
    lines = []
    if results["photos"]:
        photos = results["photos"]
        lines += [f"photos, {name}: {figures(part)}" for name, part in photos["parts"].items()]
        lines.append("photos: " + "".join(worst_group_line(photos)))
    c = results["cifar"]
    lines.append(
        f"CIFAR ({c['images']} test images): "
        f"clean flagged {percent(c['training_kinds']['clean_false_positive_rate'])}, "
        f"lowest family at sev {VISIBLE} {percent(min(c['training_kinds']['detection_rate_sev3_5'].values()))}, "
        f"held-out mean AUROC {number(heldout_means(c['heldout_kinds'])[0])}"
    )
    met = sum(ok for _, _, ok in targets(results))
    lines.append(f"targets met: {met} of {len(targets(results))}")
    return "\n".join(lines)


LOGO_COMMAND = """.venv/bin/python -m evaluation.evaluate --list-groups --photos data/photos | while read -r group; do
  fold="checkpoints/logo/$(printf %s "$group" | tr -c 'A-Za-z0-9.-' _)"
  .venv/bin/python -m training.train --photos data/photos --steps 300 --exclude-groups "$group" --out "$fold"
  .venv/bin/python -m evaluation.evaluate --model "$fold/model.pt" --groups "$group" --no-peers --limit 200 \\
      --baseline-images 200 --cases "$fold/cases" --reports "$fold/reports"
done"""


def source_sections(photos: dict) -> list[str]:
    """The source-held-out headline, every group, false alarms by tag and as thumbnails, and what each is."""
    scope = {
        "test": "the corpus's test split",
        "all": "every photo of the corpus (`--all-groups`)",
        "groups": "the photos of the groups asked for (`--groups`)",
    }[photos["scope"]]
    worst, where = worst_group_line(photos)
    lines = [
        "## Camera photos, by source",
        "",
        f"Evaluated: {scope}, at size buckets {', '.join(photos['buckets'])}, damaged at severities "
        f"{', '.join(map(str, photos['severities'])) or 'none (clean only)'}. A source group is a package, or the "
        "photographer or camera where the package says so. A group is **held out** when the model learnt from no "
        "photo of it and was calibrated on none; the headline and the targets count held-out groups only. Groups "
        "it saw are reported apart, never mixed in: their figures measure sources it learnt. What the model saw "
        f"comes from {photos['model_photos']}.",
        "",
    ]
    if photos["shared_groups"]:
        shared = "; ".join(f"{g} ({', '.join(s)})" for g, s in photos["shared_groups"].items())
        lines += [
            f"This corpus is split by photo: {len(photos['shared_groups'])} groups span splits ({shared}). "
            "The test split's own figure (last row) therefore measures sources learnt as well as new ones; "
            "training and calibration refuse such a corpus.",
            "",
        ]
    lines += [
        "| photos | groups | photos | images | right (balanced) | clean flagged | visible damage caught | AUROC |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
        *(
            f"| {name} | {p['groups']} | {p['photos']} | {p['cases']} | "
            f"{with_interval(p['balanced_accuracy'], p.get('balanced_accuracy_interval'), percent)} | "
            f"{percent(p['clean_fpr'])} | {percent(p['visible_detection'])} | "
            f"{with_interval(p['auroc_all'], p.get('auroc_all_interval'), number)} |"
            for name, p in photos["parts"].items()
        ),
        "",
        f"Right (balanced): clean photos and visible damage (severities {VISIBLE}) weighted equally. In brackets: "
        f"{INTERVAL_LEVEL:.0%} intervals from {BOOTSTRAP_DRAWS:,} resamples of the row's source groups (a source's "
        "photos fail together; `python -m evaluation.compare` compares models the same way, paired). "
        f"{worst.capitalize()}{where}.",
        "",
        "### Every source group",
        "",
        "Clean false alarms per group (every size and JPEG quality of its clean photos), held-out groups first.",
        "",
        "| group | model saw it | splits | photos | clean images | clean flagged | visible damage caught | tags |",
        "|---|---|---|---:|---:|---:|---:|---|",
    ]
    order = sorted(photos["groups"].items(), key=lambda item: (item[1]["seen"] != HELD_OUT, item[0]))
    saw = {HELD_OUT: "no (held out)", "train": "in training", "val": "in calibration"}
    lines += [
        f"| {g} | {saw[r['seen']]} | {', '.join(r['splits'])} | {r['photos']} | {r['clean_cases']} | "
        f"{percent(r['clean_fpr'])} | {percent(r['visible_detection'])} | {', '.join(r['tags'])} |"
        for g, r in order
    ]
    lines += [
        "",
        "### Clean false alarms by content tag",
        "",
        "A photo counts under each of its tags (`untagged`: the manifest gives it none).",
        "",
        "| tag | held-out photos | held-out clean images | flagged | seen photos | seen clean images | flagged |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {tag} | "
        + " | ".join(
            f"{row[part]['photos']} | {row[part]['clean_cases']} | {percent(row[part]['clean_fpr'])}"
            for part in ("held_out", "seen")
        )
        + " |"
        for tag, row in photos["tags"].items()
    ]
    alarms = photos["false_alarms"]
    lines += ["", f"### Clean photos flagged ({len(alarms)})", ""]
    if alarms:
        lines += [
            f"Each at its most confidently flagged save (held-out sources first): ![clean photos flagged]({SHEET})",
            "",
            "| photo | group | model saw it | flagged saves | P(corrupted) | tags |",
            "|---|---|---|---|---:|---|",
            *(
                f"| {a['photo']} | {a['group']} | {saw[a['seen']]} | {', '.join(a['flagged'])} of "
                f"{a['clean_cases']} | {a['score']:.2f} | {', '.join(a['tags'])} |"
                for a in alarms
            ),
        ]
    lines += [
        "",
        "### What each figure is, and leave-one-group-out",
        "",
        "- *sources never seen (held out)*: the model on groups it neither learnt from nor was calibrated on. The "
        "honest figure for users' photos, as far as these groups resemble them.",
        "- *sources seen in training / in calibration only*: the same model on groups it learnt from, or whose "
        "clean photos set its operating point. Optimistic by construction; shown to size the gap, not as a result.",
        "- *the corpus's test split, whatever the model saw*: every test-split photo, whatever its group. On a "
        "corpus split by photo, or one re-split after the model was trained, it mixes sources the model learnt "
        "with new ones: the figure earlier reports headlined.",
        "",
        "`--all-groups` evaluates every photo of the corpus, so every group is tested once, but the groups the "
        "model saw stay marked and apart. True leave-one-group-out cross-validation retrains per fold, which this "
        "machine cannot afford at the shipped budget; for a training budget of N steps it is (not run here):",
        "",
        "```",
        LOGO_COMMAND,
        "```",
        "",
        "Each fold's report then gives its one group's figures as held out (its model never saw that group).",
        "",
    ]
    return lines


def photo_sections(photos: dict, severities: list[int]) -> list[str]:
    """The per-family tables, on the held-out sources' photos (damaged at `severities`)."""
    scorers = photos["scorers"]
    detector = scorers[DETECTOR]
    lines = [
        "## Camera photos of held-out sources, by family",
        "",
        f"{photos['photos']} photos of sources the model never saw (neither trained nor calibrated on them), "
        "each at every size bucket it reaches "
        + ", ".join(f"{b}: {n} photos" for b, n in photos["buckets"].items())
        + f"; {photos['cases']} images in all. Clean: saved at JPEG q92 and q80. Corrupted: every kind of "
        f"`detector/corruptions.py` at severities {', '.join(map(str, severities))}, applied at that size, then saved "
        "as a camera saves it "
        f"(q92). Visible severities are {VISIBLE}. The detector reads the bytes as the server does.",
        "",
        "### Side by side (AUROC, clean vs each family)",
        "",
        "Every scorer on the same cases. BRISQUE costs about 2.5 s per image here (a minute at 12 MP), so it "
        f"runs on the 640 bucket's clean images and severity-{VISIBLE_SEVERITY} damage only: the first table is "
        "those cases, the second every case for the scorers that score all.",
        "",
    ]
    names = list(scorers)
    for title, table in (("cases BRISQUE scores", photos["side_by_side"]), ("all cases", photos["side_by_side_all"])):
        present = [n for n in names if n in table]
        lines += [f"{title}:", "", "| family | " + " | ".join(present) + " |", "|---|" + "---:|" * len(present)]
        lines += [f"| {f} | " + " | ".join(number(table[n][f]) for n in present) + " |" for f in PHOTO_FAMILIES]
        lines += ["| all | " + " | ".join(number(table[n]["all"]) for n in present) + " |", ""]
    lines += [
        "### Decisions side by side",
        "",
        "Each scorer's own decision: the detector at P(corrupted) > 0.5; the Laplacian rule at variance < 100; "
        "BRISQUE above the score that flags 2% of clean validation photos; the baseline at P > 0.5.",
        "",
        "| scorer | images | clean flagged | visible damage caught | right (balanced) |",
        "|---|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {n} | {s['cases']} | {percent(s['clean_fpr'])} | {percent(s['visible_detection'])} | "
        f"{percent(s['balanced_accuracy'])} |"
        for n, s in scorers.items()
    ]
    lines += ["", "### The detector: clean photos flagged, by size and JPEG quality", ""]
    qualities = list(next(iter(detector["clean_fpr_by_bucket_quality"].values())))
    lines += ["| bucket | " + " | ".join(qualities) + " |", "|---|" + "---:|" * len(qualities)]
    lines += [
        f"| {b} | " + " | ".join(percent(detector["clean_fpr_by_bucket_quality"][b][q]) for q in qualities) + " |"
        for b in BUCKETS
    ]
    lines += ["", "### The detector: detection by family and severity (all buckets)", ""]
    lines += ["| family | " + " | ".join(f"sev {s}" for s in SEVERITIES) + f" | sev {VISIBLE} | AUROC |"]
    lines += ["|---|" + "---:|" * (len(SEVERITIES) + 2)]
    lines += [
        f"| {f} | "
        + " | ".join(percent(detector["detection_by_family_severity"][f][str(s)]) for s in SEVERITIES)
        + f" | {percent(detector['detection_visible'][f])} | {number(detector['auroc'][f])} |"
        for f in PHOTO_FAMILIES
    ]
    lines += ["", "![photo detection by severity](photo_detection_by_severity.png)", ""]
    lines += ["### The detector: visible damage caught, by size bucket", ""]
    lines += ["| family | " + " | ".join(BUCKETS) + " |", "|---|" + "---:|" * len(BUCKETS)]
    lines += [
        f"| {f} | " + " | ".join(percent(detector["detection_visible_by_bucket"][b][f]) for b in BUCKETS) + " |"
        for f in PHOTO_FAMILIES
    ]
    misses = detector["misses"]
    lines += [
        "",
        f"### The detector's misses ({len(misses)}: clean photos flagged, visible damage missed)",
        "",
        ", ".join(f"`{m}`" for m in misses[:150]) + (" ..." if len(misses) > 150 else ""),
        "",
    ]
    return lines


def kind_table(metrics: dict, kinds: tuple[str, ...]) -> list[str]:
    """Detection rate per kind x severity with AUROC, then the clean false-positive rate."""
    lines = [
        "| kind | " + " | ".join(f"sev {s}" for s in SEVERITIES) + f" | sev {VISIBLE} | AUROC | AUROC sev {VISIBLE} |",
        "|---|" + "---:|" * (len(SEVERITIES) + 3),
    ]
    for kind in kinds:
        cells = [percent(metrics["detection_rate_by_severity"][kind][str(s)]) for s in SEVERITIES]
        lines.append(
            f"| {kind} | " + " | ".join(cells) + f" | {percent(metrics['detection_rate_sev3_5'][kind])} | "
            f"{number(metrics['auroc'][kind])} | {number(metrics['auroc_sev3_5'][kind])} |"
        )
    lines += [
        "",
        f"Clean images called corrupted: **{percent(metrics['clean_false_positive_rate'])}**; "
        f"accuracy {percent(metrics['accuracy'])}, balanced accuracy {percent(metrics['balanced_accuracy'])} "
        f"over {metrics['samples']} samples.",
    ]
    return lines


def heldout_means(heldout: dict) -> tuple[float, float, list[str]]:
    """Mean AUROC over all held-out CIFAR-10-C kinds (the one the targets and headline use), over those no
    training kind resembles, and the latter's names."""
    unseen = [kind for kind in HELDOUT_KINDS if NEAREST_TRAINING_KIND[kind] is None]
    everything = sum(heldout["auroc"].values()) / len(heldout["auroc"])
    return everything, sum(heldout["auroc"][k] for k in unseen) / len(unseen), unseen


def cifar_sections(cifar: dict) -> list[str]:
    training, heldout = cifar["training_kinds"], cifar["heldout_kinds"]
    everything, unseen_mean, unseen = heldout_means(heldout)
    nearest = ", ".join(f"{k} ~ {v}" for k, v in NEAREST_TRAINING_KIND.items() if v)
    base_fpr = cifar["baseline"]["training"]["clean_false_positive_rate"]
    lines = [
        "## CIFAR-10 (32x32)",
        "",
        f"{cifar['images']} test images, clean and under the CIFAR table (`detector.corruptions.CIFAR_CORRUPTIONS`: "
        "the five kinds and severities this project has always reported, mapped to photo severities in that "
        "module's docstring). A sample is called corrupted when the API's P(corrupted) > 0.5.",
        "",
        *kind_table(training, CIFAR_KINDS),
        "",
        "![CIFAR detection by severity](detection_by_severity.png)",
        "",
        "![type confusion](confusion_types.png)",
        "",
        "### CIFAR-10-C kinds (evaluation only)",
        "",
        "`evaluation/heldout.py`: CIFAR-10-C's published definitions and CIFAR severities; never trained on. "
        f"Since the photo table, some have a training kind that resembles them ({nearest}); the others "
        f"({', '.join(unseen)}) resemble none.",
        "",
        *kind_table(heldout, HELDOUT_KINDS),
        "",
        f"Mean AUROC: **{number(everything)}** over all 12; {number(unseen_mean)} over the {len(unseen)} no training "
        "kind resembles.",
        "",
        "![held-out detection by severity](heldout_by_severity.png)",
        "",
        "### Heuristic baseline on CIFAR",
        "",
        f"| kind | set | detector AUROC | baseline AUROC | detector sev {VISIBLE} | baseline sev {VISIBLE} |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for name, key, kinds in (("CIFAR table", "training", CIFAR_KINDS), ("held-out", "heldout", HELDOUT_KINDS)):
        ours, base = cifar["training_kinds" if key == "training" else "heldout_kinds"], cifar["baseline"][key]
        lines += [
            f"| {k} | {name} | {number(ours['auroc'][k])} | {number(base['auroc'][k])} | "
            f"{percent(ours['detection_rate_sev3_5'][k])} | {percent(base['detection_rate_sev3_5'][k])} |"
            for k in kinds
        ]
    ece = {name: variant["ece"] for name, variant in cifar["calibration"].items()}
    lines += [
        "",
        f"Clean images called corrupted: detector {percent(training['clean_false_positive_rate'])}, "
        f"baseline {percent(base_fpr)}.",
        "",
        "### Calibration on the CIFAR grid",
        "",
        f"ECE (10 bins), samples re-weighted to the class mix each probability is meant for: temperature-scaled "
        f"evidence {ece['temperature']:.3f} on a balanced mix, shipped probabilities {ece['shipped']:.3f} at the "
        f"operating prior ({cifar['calibration']['shipped']['corrupted_share']:.0%} corrupted; training/calibrate.py).",
        "",
        "![reliability](reliability.png)",
        "",
    ]
    return lines


def draw_curves(curves: dict[str, list[float]], floor: float, title: str, path: Path) -> None:
    """Detection rate against severity, one line per kind or family, with the clean false-positive rate."""
    figure = Figure(figsize=(6.4, 4))
    axis = figure.subplots()
    for name, rates in curves.items():
        axis.plot(SEVERITIES, rates, marker="o", label=name)
    axis.axhline(floor, color="grey", linestyle="--", label="clean (false positives)")
    axis.set(xlabel="severity", ylabel="called corrupted", ylim=(0, 1.02), xticks=SEVERITIES, title=title)
    axis.legend(fontsize="small", ncol=2)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def kind_curves(metrics: dict, kinds: tuple[str, ...]) -> dict[str, list[float]]:
    return {k: [metrics["detection_rate_by_severity"][k][str(s)] for s in SEVERITIES] for k in kinds}


def draw_matrix(matrix: list[list[int]], labels: tuple[str, ...], title: str, path: Path) -> None:
    figure = Figure(figsize=(0.9 * len(labels) + 1.5, 0.8 * len(labels) + 1.2))
    axis = figure.subplots()
    axis.imshow(matrix, cmap="Blues")
    peak = max(max(row) for row in matrix) or 1
    for i, row in enumerate(matrix):
        for j, count in enumerate(row):
            axis.text(j, i, str(count), ha="center", va="center", color="white" if count > peak / 2 else "black")
    axis.set(xticks=range(len(labels)), yticks=range(len(labels)), xlabel="predicted", ylabel="true", title=title)
    axis.set_xticklabels(labels, rotation=30, ha="right")
    axis.set_yticklabels(labels)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def draw_reliability(calibration: dict, path: Path) -> None:
    figure = Figure(figsize=(4.8, 4.5))
    axis = figure.subplots()
    axis.plot([0.5, 1], [0.5, 1], color="grey", linestyle="--", label="perfect")
    for name, variant in calibration.items():
        curve = variant["curve"]
        axis.plot(
            [b["confidence"] for b in curve],
            [b["accuracy"] for b in curve],
            marker="o",
            label=f"{name} (ECE {variant['ece']:.3f})",
        )
    axis.set(xlabel="confidence", ylabel="accuracy", title="Reliability (CIFAR grid)")
    axis.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def draw_contact_sheet(alarms: list[dict], path: Path) -> None:
    """Thumbnails of the flagged clean photos (at most SHEET_LIMIT), each captioned with its id, group and score;
    a red frame marks a held-out source, grey one the model saw."""
    shown = [a for a in alarms if Path(a["file"]).is_file()][:SHEET_LIMIT]
    caption = 3 * 12
    cell = (THUMBNAIL + 8, THUMBNAIL + caption + 8)
    rows = max(1, math.ceil(len(shown) / SHEET_COLUMNS))
    sheet = Image.new("RGB", (cell[0] * SHEET_COLUMNS, cell[1] * rows), "white")
    draw = ImageDraw.Draw(sheet)
    for index, alarm in enumerate(shown):
        left, top = cell[0] * (index % SHEET_COLUMNS), cell[1] * (index // SHEET_COLUMNS)
        with Image.open(alarm["file"]) as image:
            thumbnail = ImageOps.contain(image.convert("RGB"), (THUMBNAIL, THUMBNAIL))
        frame = "red" if alarm["seen"] == HELD_OUT else "grey"
        draw.rectangle((left + 1, top + 1, left + cell[0] - 2, top + THUMBNAIL + 6), outline=frame, width=3)
        sheet.paste(thumbnail, (left + 4 + (THUMBNAIL - thumbnail.width) // 2, top + 4))
        flagged = f"flagged {len(alarm['flagged'])} of {alarm['clean_cases']} saves"
        text = [alarm["photo"][:34], alarm["group"][:34], f"P={alarm['score']:.2f}, {flagged}"]
        draw.multiline_text((left + 4, top + THUMBNAIL + 8), "\n".join(text), fill="black", spacing=1)
    sheet.save(path, quality=85)


def write_report(results: dict, folder: Path) -> Path:
    """Write robustness.md, robustness.json and the figures into `folder`; returns the markdown path."""
    folder.mkdir(parents=True, exist_ok=True)
    cifar = results["cifar"]
    training, heldout = cifar["training_kinds"], cifar["heldout_kinds"]
    draw_curves(
        kind_curves(training, CIFAR_KINDS),
        training["clean_false_positive_rate"],
        "CIFAR table",
        folder / "detection_by_severity.png",
    )
    draw_curves(
        kind_curves(heldout, HELDOUT_KINDS),
        heldout["clean_false_positive_rate"],
        "CIFAR-10-C kinds (never trained on)",
        folder / "heldout_by_severity.png",
    )
    draw_matrix(cifar["type_confusion"], TYPES, "Corruption type (CIFAR grid)", folder / "confusion_types.png")
    draw_reliability(cifar["calibration"], folder / "reliability.png")
    photos = results["photos"]
    if photos and photos["false_alarms"]:
        draw_contact_sheet(photos["false_alarms"], folder / SHEET)
    if photos and photos["held_out"]:
        detector = photos["held_out"]["scorers"][DETECTOR]
        curves = {f: [detector["detection_by_family_severity"][f][str(s)] for s in SEVERITIES] for f in PHOTO_FAMILIES}
        draw_curves(
            curves,
            detector["clean_fpr"],
            "Held-out camera photos (all sizes)",
            folder / "photo_detection_by_severity.png",
        )
    (folder / "robustness.json").write_text(json.dumps(results, indent=1) + "\n")
    lines = [
        "# Robustness report",
        "",
        f"Generated on {results['date']} by `{results['command']}` for `{results['model']}`. Every number and "
        "figure in this folder comes from that one command.",
        "",
        "## Targets",
        "",
        "| target | measured | |",
        "|---|---|---|",
        *(f"| {name} | {measured} | {verdict(ok)} |" for name, measured, ok in targets(results)),
        "",
        *(source_sections(photos) if photos else []),
        *(photo_sections(photos["held_out"], photos["severities"]) if photos and photos["held_out"] else []),
        *cifar_sections(cifar),
    ]
    path = folder / "robustness.md"
    path.write_text("\n".join(lines))
    return path
