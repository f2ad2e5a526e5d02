"""The photo evaluation by source: photos at four sizes, clean and under every family x severity, scored by the
model through the serving path and by the peer tools on the very same bytes, and judged on the sources the model
never saw.

Sources: a photo's source group is its package, or the photographer or camera where the package says so
(training.photo_data.photo_group). A group is held out when the model learnt from no photo of it and was
calibrated on none (`model_photos`: the checkpoint's record, or the shipped weights' in
shipped_model_photos.json). The headline counts held-out groups only; groups the model saw are reported apart.

Cases: every evaluated photo (the test split, or every photo) at each size of training.photo_data.PHOTO_SIZES
it reaches (longer side 640, 1024, 1600, and its own size when that is at least 3000 px; a photo smaller than
640 stands at its own size in the 640 bucket):

- clean, saved as JPEG at q92 and at q80 (training.photo_data.CLEAN_QUALITIES);
- under every kind of the table at every severity 1..5, applied at that size, then saved as a camera
  saves it (JPEG q92).

The cases are written once to a folder (`CaseSet`), so every scorer reads the same bytes and the peers'
scores, which no model changes, are computed once and cached there.

Scorers (higher score = more corrupted; each has its own decision):
- the detector (detector.inference: bytes -> views -> verdict, as the server answers);
- the variance-of-Laplacian rule users copy: `cv2.Laplacian(grey, cv2.CV_64F).var() < 100`;
- BRISQUE (the `brisque` package's shipped model), on the 640 bucket's clean images and severity-3 damage only
  (about 2.5 s an image here, a minute at 12 MP), its decision at the threshold that keeps 2% of clean
  validation photos flagged;
- the heuristic baseline (evaluation/baseline.py) fitted on training photos made the same way, its features
  computed at most 1024 px long.
"""

import hashlib
import io
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from brisque import BRISQUE
from PIL import Image
from sklearn.metrics import roc_auc_score
from tqdm import tqdm

from detector.corruptions import (
    CORRUPTIONS,
    KINDS,
    SEVERITIES,
    VISIBLE_SEVERITIES,
    VISIBLE_SEVERITY,
    encode_jpeg,
    from_pil,
    to_pil,
)
from detector.decoding import decode_image
from detector.inference import CorruptionDetector
from detector.model import is_corrupted, lineage, read_checkpoint
from evaluation.baseline import HeuristicBaseline, image_features
from evaluation.metrics import balanced_accuracy, group_bootstrap, interval
from training.corpus import BuiltPhoto
from training.photo_data import (
    CLEAN_QUALITIES,
    PHOTO_SIZES,
    at_long_side,
    photo_group,
    photo_sizes,
)

CAMERA_SAVE = 92


def camera_save(image: torch.Tensor) -> bytes:
    """A damaged photo (uint8 tensor) saved as a camera saves it: a q92 JPEG, as every corrupted case is."""
    return encode_jpeg(to_pil(image), CAMERA_SAVE)


# The Laplacian rule as users copy it.
LAPLACIAN_THRESHOLD = 100.0
# BRISQUE's decision threshold: the clean validation photos' score at this quantile (it ships no threshold).
PEER_CLEAN_FPR = 0.02
BRISQUE_BUCKETS = ("640",)
BRISQUE_SEVERITIES = (0, VISIBLE_SEVERITY)
BASELINE_SIDE = 1024


BUCKETS = tuple("≥3000" if size is None else str(size) for size in PHOTO_SIZES)


def bucket_of(long_side: int) -> str:
    """The bucket a case of this longer side belongs to (its own size: 640 for smaller, ≥3000 for larger)."""
    sizes = [size for size in PHOTO_SIZES if size]
    if long_side >= 3000:
        return BUCKETS[-1]
    return str(min(sizes, key=lambda size: abs(size - long_side)) if long_side >= sizes[0] else sizes[0])


@dataclass(frozen=True)
class PhotoCase:
    """One test image: which photo, at which size, clean (at which JPEG quality) or how corrupted."""

    id: str
    photo: str
    bucket: str
    width: int
    height: int
    variant: str  # "clean q92", "clean q80" or the kind
    kind: str | None
    family: str | None
    severity: int  # 0 for clean
    label: int  # 1 corrupted

    @property
    def file(self) -> str:
        return f"{self.id}.jpg"


def case_seed(*parts: object) -> int:
    """A seed from the case's identity alone, stable across runs and machines."""
    return int.from_bytes(hashlib.sha256("/".join(map(str, parts)).encode()).digest()[:8], "little")


def photo_cases(
    photo: BuiltPhoto, image: Image.Image, severities: Sequence[int], buckets: Sequence[str] = BUCKETS
) -> Iterable[tuple[PhotoCase, bytes]]:
    """Every case of one photo: each size it reaches (in `buckets`), clean at each quality and under each
    kind x severity."""
    for size in (size for size in photo_sizes(*image.size) if bucket_of(size) in buckets):
        resized = at_long_side(image, size)
        tensor = from_pil(resized)
        about = {"photo": photo.id, "bucket": bucket_of(size), "width": resized.width, "height": resized.height}
        for quality in CLEAN_QUALITIES:
            case_id = f"{photo.id}@{size}-clean-q{quality}"
            yield (
                PhotoCase(case_id, **about, variant=f"clean q{quality}", kind=None, family=None, severity=0, label=0),
                encode_jpeg(resized, quality),
            )
        for kind in KINDS:
            for severity in severities:
                case_id = f"{photo.id}@{size}-{kind}-{severity}"
                corrupted = CORRUPTIONS[kind](tensor, severity, case_seed(case_id))
                image_bytes = camera_save(corrupted)
                yield (
                    PhotoCase(
                        case_id,
                        **about,
                        variant=kind,
                        kind=kind,
                        family=CORRUPTIONS[kind].family,
                        severity=severity,
                        label=1,
                    ),
                    image_bytes,
                )


class CaseSet:
    """The cases of a photo evaluation, written once into a folder with their index (cases.json)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def build(
        self,
        photos: Sequence[BuiltPhoto],
        photo_folder: Path,
        severities: Sequence[int] = SEVERITIES,
        buckets: Sequence[str] = BUCKETS,
    ) -> None:
        """Write every case of every photo, unless the folder already holds exactly these."""
        key = {"photos": [p.id for p in photos], "severities": list(severities), "kinds": list(KINDS)}
        if tuple(buckets) != BUCKETS:
            key["buckets"] = list(buckets)
        index = self.folder / "cases.json"
        if index.is_file() and json.loads(index.read_text())["key"] == key:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        cases = []
        for photo in tqdm(photos, desc="photo cases", unit="photo"):
            image = decode_image((photo_folder / photo.file).read_bytes())
            for case, data in photo_cases(photo, image, severities, buckets):
                (self.folder / case.file).write_bytes(data)
                cases.append(asdict(case))
        index.write_text(json.dumps({"key": key, "cases": cases}))
        (self.folder / "peers.json").unlink(missing_ok=True)

    def cases(self) -> list[PhotoCase]:
        return [PhotoCase(**case) for case in json.loads((self.folder / "cases.json").read_text())["cases"]]

    def read(self, case: PhotoCase) -> bytes:
        return (self.folder / case.file).read_bytes()


def model_scores(detector: CorruptionDetector, cases: CaseSet, batch: int = 8) -> dict[str, float]:
    """P(corrupted) of every case through the serving path, a few images per call as a server batches them."""
    listed = cases.cases()
    scores = {}
    for start in tqdm(range(0, len(listed), batch), desc="detector", unit="batch"):
        part = listed[start : start + batch]
        for case, answer in zip(part, detector.predict([cases.read(case) for case in part]), strict=True):
            scores[case.id] = float(answer["probs"]["corrupted"])
    return scores


def laplacian_variance(data: bytes) -> float:
    """cv2.Laplacian(grey, cv2.CV_64F).var() of an encoded image, exactly as the copied rule computes it."""
    grey = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)
    return float(cv2.Laplacian(grey, cv2.CV_64F).var())


class FixedBrisque(BRISQUE):
    """The `brisque` package's BRISQUE, with its features flattened: under numpy 2 some come as 1-element arrays
    and its own scaling then fails. The features, model and score are the package's."""

    def scale_features(self, features: Sequence) -> np.ndarray:
        return super().scale_features(np.concatenate([np.ravel(np.asarray(f, dtype=np.float64)) for f in features]))


def brisque_score(scorer: BRISQUE, data: bytes) -> float:
    return float(scorer.score(np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))))


def baseline_features(data: bytes) -> np.ndarray:
    """The heuristic baseline's features of an encoded image, at most BASELINE_SIDE px long."""
    image = decode_image(data)
    if max(image.size) > BASELINE_SIDE:
        image = at_long_side(image, BASELINE_SIDE)
    return image_features(from_pil(image)[None])[0]


def peer_scores(cases: CaseSet) -> dict[str, dict[str, float]]:
    """Scores of the model-free peers for every case (BRISQUE on its buckets), cached in the case folder."""
    cache = cases.folder / "peers.json"
    if cache.is_file():
        return json.loads(cache.read_text())
    brisque = FixedBrisque(url=False)
    scores: dict[str, dict[str, float]] = {"laplacian": {}, "brisque": {}, "baseline_features": {}}
    for case in tqdm(cases.cases(), desc="peers", unit="img"):
        data = cases.read(case)
        scores["laplacian"][case.id] = laplacian_variance(data)
        scores["baseline_features"][case.id] = baseline_features(data).tolist()
        if case.bucket in BRISQUE_BUCKETS and case.severity in BRISQUE_SEVERITIES:
            scores["brisque"][case.id] = brisque_score(brisque, data)
    cache.write_text(json.dumps(scores))
    return scores


@dataclass
class Scorer:
    """One tool's scores on the cases (higher = more corrupted) and its own decision rule."""

    name: str
    score: dict[str, float]
    decide: Callable[[float], bool]


def threshold_at_clean_fpr(clean_scores: Sequence[float], fpr: float) -> float:
    """The score above which a fraction `fpr` of clean scores lie."""
    return float(np.quantile(np.asarray(clean_scores), 1 - fpr))


def fit_baseline(photos: Sequence[BuiltPhoto], folder: Path) -> HeuristicBaseline:
    """The heuristic baseline fitted on training photos at 640 px: clean at both qualities, and each kind once
    at a random severity, saved like the test cases."""
    features, labels = [], []
    rng = np.random.default_rng(0)
    for photo in tqdm(photos, desc="baseline fit", unit="photo"):
        image = at_long_side(decode_image((folder / photo.file).read_bytes()), 640)
        tensor = from_pil(image)
        for quality in CLEAN_QUALITIES:
            features.append(baseline_features(encode_jpeg(image, quality)))
            labels.append(0)
        for kind in KINDS:
            corrupted = CORRUPTIONS[kind](tensor, float(rng.uniform(1, 5)), int(rng.integers(2**31)))
            features.append(baseline_features(camera_save(corrupted)))
            labels.append(1)
    return HeuristicBaseline().fit_features(np.stack(features), np.array(labels))


def laplacian_rule(variances: dict[str, float]) -> Scorer:
    """The copied rule as a scorer: corrupted when the variance of the Laplacian is under LAPLACIAN_THRESHOLD."""
    return Scorer("laplacian var < 100", {k: -v for k, v in variances.items()}, lambda s: -s < LAPLACIAN_THRESHOLD)


def laplacian_peer(cases: CaseSet) -> Scorer:
    """The Laplacian rule alone (milliseconds an image, where BRISQUE takes seconds): the blur and motion peer."""
    return laplacian_rule(
        {case.id: laplacian_variance(cases.read(case)) for case in tqdm(cases.cases(), desc="laplacian", unit="img")}
    )


def peers(cases: CaseSet, train_photos: Sequence[BuiltPhoto], val_cases: CaseSet | None, folder: Path) -> list[Scorer]:
    """The three peers as scorers: the Laplacian rule, BRISQUE (thresholded on validation photos), the baseline."""
    scores = peer_scores(cases)
    laplacian = laplacian_rule(scores["laplacian"])
    baseline = fit_baseline(train_photos, folder)
    ids = list(scores["baseline_features"])
    probabilities = baseline.classifier.predict_proba(np.array([scores["baseline_features"][i] for i in ids]))[:, 1]
    heuristic = Scorer("heuristic baseline", dict(zip(ids, map(float, probabilities), strict=True)), is_corrupted)
    brisque_threshold = float("inf")
    if val_cases is not None:
        val = peer_scores(val_cases)
        clean = [val["brisque"][c.id] for c in val_cases.cases() if c.label == 0 and c.id in val["brisque"]]
        brisque_threshold = threshold_at_clean_fpr(clean, PEER_CLEAN_FPR) if clean else float("inf")
    brisque = Scorer("BRISQUE", scores["brisque"], lambda s: s > brisque_threshold)
    return [laplacian, brisque, heuristic]


def rate(values: Sequence[bool]) -> float:
    return float(np.mean(values)) if len(values) else float("nan")


def auroc(cases: Sequence[PhotoCase], scores: dict[str, float], family: str | None = None) -> float:
    """AUROC of clean cases against a family's (or every) corrupted case, over the cases a scorer scored."""
    chosen = [c for c in cases if c.id in scores and (c.label == 0 or family is None or c.family == family)]
    labels = [c.label for c in chosen]
    if len(set(labels)) < 2:
        return float("nan")
    return float(roc_auc_score(labels, [scores[c.id] for c in chosen]))


def summarise(cases: Sequence[PhotoCase], scorer: Scorer) -> dict:
    """Everything the report shows of one scorer: false positives, detection, AUROC, accuracy, misses."""
    scored = [c for c in cases if c.id in scorer.score]
    flagged = {c.id: bool(scorer.decide(scorer.score[c.id])) for c in scored}
    clean = [c for c in scored if c.label == 0]
    families = list(dict.fromkeys(CORRUPTIONS[k].family for k in KINDS))
    visible = [c for c in scored if c.label == 1 and c.severity in VISIBLE_SEVERITIES]
    detection_visible = {f: rate([flagged[c.id] for c in visible if c.family == f]) for f in families}
    clean_right = rate([not flagged[c.id] for c in clean])
    qualities = list(dict.fromkeys(c.variant for c in clean))
    return {
        "cases": len(scored),
        "clean_fpr": 1 - clean_right,
        "clean_fpr_by_bucket_quality": {
            b: {v: rate([flagged[c.id] for c in clean if c.variant == v and c.bucket == b]) for v in qualities}
            for b in BUCKETS
        },
        "clean_fpr_by_bucket": {b: rate([flagged[c.id] for c in clean if c.bucket == b]) for b in BUCKETS},
        "detection_by_family_severity": {
            f: {str(s): rate([flagged[c.id] for c in scored if c.family == f and c.severity == s]) for s in SEVERITIES}
            for f in families
        },
        "detection_visible": detection_visible,
        "visible_detection": rate([flagged[c.id] for c in visible]),
        "detection_visible_by_bucket": {
            b: {f: rate([flagged[c.id] for c in visible if c.family == f and c.bucket == b]) for f in families}
            for b in BUCKETS
        },
        "auroc": {f: auroc(scored, scorer.score, f) for f in families},
        "auroc_all": auroc(scored, scorer.score),
        # Right on clean photos and visible damage, the two weighted equally (every case counted once).
        "balanced_accuracy": balanced_accuracy(1 - clean_right, rate([flagged[c.id] for c in visible])),
        "accuracy_visible": rate([flagged[c.id] == bool(c.label) for c in clean + visible]),
        "misses": sorted([c.id for c in visible if not flagged[c.id]] + [c.id for c in clean if flagged[c.id]]),
    }


def family_aurocs(cases: Sequence[PhotoCase], scores: dict[str, float]) -> dict[str, float]:
    families = dict.fromkeys(CORRUPTIONS[k].family for k in KINDS)
    return {**{f: auroc(cases, scores, f) for f in families}, "all": auroc(cases, scores)}


def compare(cases: Sequence[PhotoCase], scorers: Sequence[Scorer]) -> dict:
    """The scorers summarised on the same cases, and their AUROCs side by side: on the cases every scorer scored
    (the 640 bucket, where BRISQUE runs), and on all cases for the scorers that score all."""
    common = [c for c in cases if all(c.id in scorer.score for scorer in scorers)]
    return {
        "photos": len({c.photo for c in cases}),
        "cases": len(cases),
        "buckets": {b: len({c.photo for c in cases if c.bucket == b}) for b in BUCKETS},
        "scorers": {scorer.name: summarise(cases, scorer) for scorer in scorers},
        "side_by_side": {scorer.name: family_aurocs(common, scorer.score) for scorer in scorers},
        "side_by_side_all": {
            scorer.name: family_aurocs(cases, scorer.score)
            for scorer in scorers
            if all(c.id in scorer.score for c in cases)
        },
    }


# Whether the evaluated model saw a photo's source: in training, in calibration, or never.
SEEN_IN_TRAINING, SEEN_IN_CALIBRATION, HELD_OUT = "train", "val", "held out"
# The photos the shipped weights learnt from and were calibrated on (they predate training.train's record).
SHIPPED_MODEL_PHOTOS = Path(__file__).with_name("shipped_model_photos.json")


@dataclass(frozen=True)
class ModelPhotos:
    """The photos a model learnt from and was calibrated on ({id: group}), and where that record comes from."""

    train: dict[str, str]
    val: dict[str, str]
    record: str


def model_photos(checkpoint: Path, corpus: Sequence[BuiltPhoto]) -> ModelPhotos:
    """What a checkpoint saw: training.train records it in the checkpoint; the shipped weights' record is
    SHIPPED_MODEL_PHOTOS, matched by the file's sha256; for any other checkpoint, the corpus's own train and
    val splits are assumed (and the report says so)."""
    metadata = read_checkpoint(checkpoint)["metadata"]
    shipped = json.loads(SHIPPED_MODEL_PHOTOS.read_text())
    if "training_photos" in metadata:
        calibrated = metadata.get("calibration", {}).get("validation_photos", {})
        if shipped["sha256"] in lineage(metadata):  # fine-tuned, at some remove, from weights that predate the record
            earlier = {**shipped["train"], **shipped["val"]}
            record = (
                f"the checkpoint's own record and, for the weights it was fine-tuned from, {SHIPPED_MODEL_PHOTOS.name}"
            )
            return ModelPhotos({**earlier, **metadata["training_photos"]}, calibrated, record)
        return ModelPhotos(metadata["training_photos"], calibrated, "the checkpoint's own record")
    if hashlib.sha256(checkpoint.read_bytes()).hexdigest() == shipped["sha256"]:
        return ModelPhotos(shipped["train"], shipped["val"], f"{SHIPPED_MODEL_PHOTOS.name} ({shipped['split']})")
    split = {name: {p.id: photo_group(p) for p in corpus if p.split == name} for name in ("train", "val")}
    return ModelPhotos(split["train"], split["val"], "assumed: the corpus's train and val splits (no record)")


@dataclass(frozen=True)
class Source:
    """Where an evaluated photo comes from and whether the model saw that source."""

    group: str
    tags: tuple[str, ...]
    split: str
    seen: str  # SEEN_IN_TRAINING, SEEN_IN_CALIBRATION or HELD_OUT


def photo_tags(photo: BuiltPhoto) -> tuple[str, ...]:
    """The photo's content tags (macro, night, snow, ...), none for corpora built before tags were recorded."""
    return tuple(getattr(photo, "tags", None) or ())


def photo_sources(corpus: Sequence[BuiltPhoto], seen: ModelPhotos) -> dict[str, Source]:
    """Each corpus photo's source and whether the model saw it. A group is seen when the model saw any photo of
    it, under the group it was recorded with or the one the corpus gives that photo now."""
    groups_now = {photo.id: photo_group(photo) for photo in corpus}

    def groups(photos: dict[str, str]) -> set[str]:
        return set(photos.values()) | {groups_now[i] for i in photos if i in groups_now}

    trained, calibrated = groups(seen.train), groups(seen.val)

    def status(group: str) -> str:
        return SEEN_IN_TRAINING if group in trained else SEEN_IN_CALIBRATION if group in calibrated else HELD_OUT

    return {p.id: Source(groups_now[p.id], photo_tags(p), p.split, status(groups_now[p.id])) for p in corpus}


def group_intervals(cases: Sequence[PhotoCase], scorer: Scorer, sources: dict[str, Source]) -> dict[str, tuple]:
    """A scorer's AUROC (over every scored case) and right (over clean cases and visible damage) intervals over
    resamples of the cases' source groups (evaluation.metrics.group_bootstrap), from one set of draws."""
    scored = [c for c in cases if c.id in scorer.score]
    if not scored:
        nothing = (float("nan"), float("nan"))
        return {"balanced_accuracy_interval": nothing, "auroc_all_interval": nothing}
    labels = np.array([c.label for c in scored])
    scores = np.array([scorer.score[c.id] for c in scored])
    flagged = np.array([bool(scorer.decide(score)) for score in scores])
    counted = np.array([c.label == 0 or c.severity in VISIBLE_SEVERITIES for c in scored])
    groups = [sources[c.photo].group for c in scored]
    drawn = group_bootstrap(labels, scores, flagged, groups, counted=counted)
    return {"balanced_accuracy_interval": interval(drawn[:, 1]), "auroc_all_interval": interval(drawn[:, 0])}


def brief(cases: Sequence[PhotoCase], scorer: Scorer, sources: dict[str, Source]) -> dict:
    """The headline figures of one scorer on some cases: how many, right (balanced), clean flagged, caught, AUROC."""
    summary = summarise(cases, scorer)
    return {
        "groups": len({sources[c.photo].group for c in cases}),
        "photos": len({c.photo for c in cases}),
        "cases": summary["cases"],
        "clean_cases": sum(c.label == 0 for c in cases),
        **{key: summary[key] for key in ("balanced_accuracy", "clean_fpr", "visible_detection", "auroc_all")},
    }


def part_figures(cases: Sequence[PhotoCase], scorer: Scorer, sources: dict[str, Source]) -> dict:
    """`brief` of a headline row (held-out sources, seen ones, the test split), with right and AUROC intervals
    over the row's source groups."""
    return {**brief(cases, scorer, sources), **group_intervals(cases, scorer, sources)}


def by_group(cases: Sequence[PhotoCase], scorer: Scorer, sources: dict[str, Source]) -> dict[str, dict]:
    """Every source group's figures, with whether the model saw it and its splits and tags."""
    groups: dict[str, list[PhotoCase]] = {}
    for case in cases:
        groups.setdefault(sources[case.photo].group, []).append(case)
    table = {}
    for group, members in sorted(groups.items()):
        photos = [sources[photo] for photo in dict.fromkeys(c.photo for c in members)]
        table[group] = {
            "seen": photos[0].seen,
            "splits": sorted({photo.split for photo in photos}),
            "tags": sorted({tag for photo in photos for tag in photo.tags}),
            **brief(members, scorer, sources),
        }
    return table


def worst_group(groups: dict[str, dict]) -> str | None:
    """The held-out group whose clean photos are flagged most (the one with more clean images on a tie)."""
    held_out = {g: row for g, row in groups.items() if row["seen"] == HELD_OUT and row["clean_cases"]}
    return max(held_out, key=lambda g: (held_out[g]["clean_fpr"], held_out[g]["clean_cases"]), default=None)


def by_tag(cases: Sequence[PhotoCase], scorer: Scorer, sources: dict[str, Source]) -> dict[str, dict]:
    """Clean false alarms by content tag (a photo counts under each of its tags; "untagged" if none), on photos
    of held-out sources and, apart, of seen ones."""
    table: dict[str, dict] = {}
    for case in (c for c in cases if c.label == 0 and c.id in scorer.score):
        source = sources[case.photo]
        part = "held_out" if source.seen == HELD_OUT else "seen"
        for tag in source.tags or ("untagged",):
            row = table.setdefault(
                tag, {p: {"photos": set(), "clean_cases": 0, "flagged": 0} for p in ("held_out", "seen")}
            )
            row[part]["photos"].add(case.photo)
            row[part]["clean_cases"] += 1
            row[part]["flagged"] += bool(scorer.decide(scorer.score[case.id]))
    return {
        tag: {
            part: {"photos": len(c["photos"]), "clean_cases": c["clean_cases"], "clean_fpr": rate_of(c)}
            for part, c in row.items()
        }
        for tag, row in sorted(table.items())
    }


def rate_of(counts: dict) -> float:
    return counts["flagged"] / counts["clean_cases"] if counts["clean_cases"] else float("nan")


def false_alarms(cases: CaseSet, scorer: Scorer, sources: dict[str, Source]) -> list[dict]:
    """Each clean photo flagged at some size or quality: which saves, its source, and the file of its most
    confidently flagged save (for the report's contact sheet); held-out sources first, then by score."""
    flagged: dict[str, list[PhotoCase]] = {}
    clean: dict[str, int] = {}
    for case in (c for c in cases.cases() if c.label == 0 and c.id in scorer.score):
        clean[case.photo] = clean.get(case.photo, 0) + 1
        if scorer.decide(scorer.score[case.id]):
            flagged.setdefault(case.photo, []).append(case)
    alarms = []
    for photo, hits in flagged.items():
        worst = max(hits, key=lambda c: scorer.score[c.id])
        source = sources[photo]
        alarms.append(
            {
                "photo": photo,
                "group": source.group,
                "seen": source.seen,
                "tags": list(source.tags),
                "flagged": [f"{c.bucket} {c.variant.removeprefix('clean ')}" for c in hits],
                "clean_cases": clean[photo],
                "score": scorer.score[worst.id],
                "file": str(cases.folder / worst.file),
            }
        )
    return sorted(alarms, key=lambda a: (a["seen"] != HELD_OUT, -a["score"]))


def evaluate_photos(model: Scorer, cases: CaseSet, peer_scorers: Sequence[Scorer], sources: dict[str, Source]) -> dict:
    """The detector's scores (and the peers') on photos of sources it never saw: the headline; the same figures on
    the sources it saw and on the whole test split, apart; every group's figures, false alarms by tag and by photo."""
    listed = cases.cases()
    held_out = [c for c in listed if sources[c.photo].seen == HELD_OUT]
    parts = {
        "sources never seen (held out)": held_out,
        "sources seen in training": [c for c in listed if sources[c.photo].seen == SEEN_IN_TRAINING],
        "sources seen in calibration only": [c for c in listed if sources[c.photo].seen == SEEN_IN_CALIBRATION],
        "the corpus's test split, whatever the model saw": [c for c in listed if sources[c.photo].split == "test"],
    }
    groups = by_group(listed, model, sources)
    return {
        "held_out": compare(held_out, [model, *peer_scorers]) if held_out else None,
        "parts": {name: part_figures(part, model, sources) for name, part in parts.items() if part},
        "groups": groups,
        "worst_group": worst_group(groups),
        "tags": by_tag(listed, model, sources),
        "false_alarms": false_alarms(cases, model, sources),
    }
