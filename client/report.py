"""--report: the audit page of a run, one self-contained HTML file (images embedded) that reads on a phone.

What a person gating a data set looks at after a scan: how many files were clean, corrupted or not scored; how
corrupted ones split by kind of damage; where P(corrupted) falls; and the flagged images themselves, grouped by
kind with the most confident first, plus where the model sees the damage in the most confident ones.

`Report` is fed every record as it is written (client/results.py) and keeps only counts and the few images it
shows, so a million-file run costs it no more memory than a small one.
"""

import base64
import heapq
import html
import io
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from client.api import ClientError, Prediction
from client.sources import read_bytes
from detector.decoding import BadImageError, decode_image

# Thumbnails shown per kind of damage, the most confident first; the rest are counted.
GALLERY_PER_KIND = 24
# Heat maps of the most confident flagged images: one request's explanation budget (detector/budget.py).
EXPLAINED = 8
THUMBNAIL = 160  # pixels, long side
BINS = 20
# Error examples listed per error type.
ERROR_EXAMPLES = 10
NO_KIND = "kind not given"  # a server that answers without corruption types

STYLE = """
:root { --clean: #2e7d32; --corrupted: #c62828; --error: #5f6368; --muted: #5f6368;
  font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #202124; background: #fafafa; }
body { margin: 0; }
main { max-width: 1100px; margin: 0 auto; padding: 1rem; }
h1 { margin: 0.5rem 0 0.25rem; font-size: 1.6rem; }
h2 { margin-top: 2rem; font-size: 1.25rem; }
.muted, figcaption { color: var(--muted); }
table { border-collapse: collapse; width: 100%; max-width: 40rem; }
th, td { text-align: left; padding: 0.3rem 0.5rem; border-bottom: 1px solid #ddd; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
.bar { height: 0.7rem; border-radius: 2px; min-width: 1px; }
.clean { background: var(--clean); fill: var(--clean); }
.corrupted { background: var(--corrupted); fill: var(--corrupted); }
.error { background: var(--error); }
svg { width: 100%; max-width: 40rem; height: auto; display: block; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(8.5rem, 1fr)); gap: 0.6rem; }
.grid.wide { grid-template-columns: repeat(auto-fill, minmax(10rem, 1fr)); }
figure { margin: 0; background: #fff; border: 1px solid #e0e0e0; border-radius: 4px; padding: 0.3rem; }
figure img { width: 100%; height: auto; display: block; }
figcaption { font-size: 0.8rem; overflow-wrap: anywhere; margin-top: 0.2rem; }
ul { padding-left: 1.2rem; } li { overflow-wrap: anywhere; }
"""


def p_corrupted(record: dict) -> float:
    return record["probs"]["corrupted"]


def thumbnail(file: str) -> str | None:
    """A small JPEG of the file as a data: URI, decoded by the serving core's checked decoder; None if it can't be."""
    try:
        image = decode_image(read_bytes(file), reduce_to=2 * THUMBNAIL)
    except (OSError, BadImageError):
        return None
    image.thumbnail((THUMBNAIL, THUMBNAIL))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def files(count: int) -> str:
    return "1 file" if count == 1 else f"{count} files"


def percent(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "-"


class Report:
    """Counts, a histogram and the images to show, gathered record by record."""

    def __init__(self) -> None:
        self.labels: Counter = Counter()
        self.kinds: Counter = Counter()
        self.errors: Counter = Counter()
        self.error_examples: dict[str, list[str]] = {}
        self.histogram = [Counter() for _ in range(BINS)]
        self.flagged: dict[str, list[tuple[float, str]]] = {}  # kind -> min-heap of (P(corrupted), file)
        self.top: list[tuple[float, str]] = []  # the EXPLAINED most confident flagged, any kind

    def add(self, record: dict) -> None:
        if record["error"]:
            kind = record["error"]["type"]
            self.labels["error"] += 1
            self.errors[kind] += 1
            examples = self.error_examples.setdefault(kind, [])
            if len(examples) < ERROR_EXAMPLES:
                examples.append(record["file"])
            return
        probability = p_corrupted(record)
        self.labels[record["label"]] += 1
        self.histogram[min(int(probability * BINS), BINS - 1)][record["label"]] += 1
        if record["label"] == "corrupted":
            kind = record["corruption_type"] or NO_KIND
            self.kinds[kind] += 1
            keep(self.flagged.setdefault(kind, []), (probability, record["file"]), GALLERY_PER_KIND)
            keep(self.top, (probability, record["file"]), EXPLAINED)

    def write(self, path: Path, title: str, explain: Callable[[str], Prediction] | None = None) -> None:
        """The page, with heat maps from `explain` (a client's explain) when given."""
        total = sum(self.labels.values())
        sections = [
            f"<h1>{html.escape(title)}</h1>",
            f'<p class="muted">{files(total)}: {self.labels["clean"]} clean, {self.labels["corrupted"]} corrupted '
            f"({percent(self.labels['corrupted'], total)}), {self.labels['error']} not scored.</p>",
            self._counts(total),
            self._histogram(),
            self._explanations(explain) if explain and self.top else "",
            self._gallery(),
            self._errors(),
        ]
        page = (
            '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{html.escape(title)}</title><style>{STYLE}</style></head>"
            f"<body><main>{''.join(sections)}</main></body></html>\n"
        )
        path.write_text(page, encoding="utf-8")

    def _counts(self, total: int) -> str:
        rows = [("clean", "clean"), ("corrupted", "corrupted"), ("error", "not scored")]
        labels = "".join(
            f"<tr><td>{name}</td><td class='n'>{self.labels[key]}</td><td class='n'>{percent(self.labels[key], total)}"
            f"</td><td style='width:40%'><div class='bar {key}' style='width:{percent(self.labels[key], total)}'>"
            "</div></td></tr>"
            for key, name in rows
        )
        flagged = sum(self.kinds.values())
        kinds = "".join(
            f"<tr><td>{html.escape(kind)}</td><td class='n'>{count}</td><td class='n'>{percent(count, flagged)}</td>"
            f"<td style='width:40%'><div class='bar corrupted' style='width:{percent(count, flagged)}'></div></td></tr>"
            for kind, count in self.kinds.most_common()
        )
        return (
            "<h2>By label</h2><table><tr><th>label</th><th>files</th><th>share</th><th></th></tr>"
            f"{labels}</table>"
            + (
                "<h2>Corrupted, by kind of damage</h2><table><tr><th>kind</th><th>files</th><th>share</th><th></th>"
                f"</tr>{kinds}</table>"
                if kinds
                else ""
            )
        )

    def _histogram(self) -> str:
        """Files per bin of P(corrupted), stacked by the label they got, as an inline SVG."""
        width, height, bar = 400, 150, 400 / BINS
        tallest = max((sum(bin_.values()) for bin_ in self.histogram), default=0) or 1
        shapes = []
        for index, counts in enumerate(self.histogram):
            bottom = height
            for label in ("clean", "corrupted"):
                size = counts[label] / tallest * (height - 10)
                if size:
                    shapes.append(
                        f'<rect x="{index * bar + 1:.1f}" y="{bottom - size:.1f}" width="{bar - 2:.1f}" '
                        f'height="{size:.1f}" class="{label}"><title>{label}: {counts[label]} files with '
                        f"P(corrupted) in [{index / BINS:.2f}, {(index + 1) / BINS:.2f})</title></rect>"
                    )
                    bottom -= size
        axis = "".join(
            f'<text x="{x * width:.0f}" y="{height + 14}" font-size="11" text-anchor="middle">{x:g}</text>'
            for x in (0, 0.25, 0.5, 0.75, 1)
        )
        return (
            "<h2>P(corrupted)</h2>"
            f'<p class="muted">Files per 1/{BINS} of the probability, coloured by the label they got; the tallest '
            f"bar is {tallest} files.</p>"
            f'<svg viewBox="-10 0 {width + 20} {height + 20}" role="img" aria-label="histogram of P(corrupted)">'
            f'<line x1="0" y1="{height}" x2="{width}" y2="{height}" stroke="#888"/>{"".join(shapes)}{axis}</svg>'
        )

    def _explanations(self, explain: Callable[[str], Prediction]) -> str:
        figures = []
        for probability, file in sorted(self.top, reverse=True):
            try:
                overlay = explain(file).body["explanation"]["overlay_png"]
            except ClientError:
                continue  # the file changed or vanished since it was scored: shown in the gallery anyway
            figures.append(figure(f"data:image/png;base64,{overlay}", file, probability))
        return (
            f"<h2>Where the model sees corruption</h2><p class='muted'>The {len(figures)} most confident flagged "
            "images, with the heat map of the view that decided.</p>"
            f"<div class='grid wide'>{''.join(figures)}</div>"
        )

    def _gallery(self) -> str:
        if not self.kinds:
            return "<h2>Flagged images</h2><p>None.</p>"
        parts = ["<h2>Flagged images, by kind of damage</h2>"]
        for kind, count in self.kinds.most_common():
            shown = sorted(self.flagged[kind], reverse=True)
            figures = "".join(figure(thumbnail(file), file, probability) for probability, file in shown)
            more = f", the {len(shown)} most confident shown" if count > len(shown) else ""
            parts.append(f"<h3>{html.escape(kind)}: {files(count)}{more}</h3><div class='grid'>{figures}</div>")
        return "".join(parts)

    def _errors(self) -> str:
        if not self.errors:
            return ""
        items = "".join(
            f"<li><b>{html.escape(kind)}</b>: {files(count)}, e.g. "
            + ", ".join(f"<code>{html.escape(file)}</code>" for file in self.error_examples[kind])
            + "</li>"
            for kind, count in self.errors.most_common()
        )
        return f"<h2>Not scored</h2><ul>{items}</ul>"


def keep(heap: list[tuple[float, str]], item: tuple[float, str], size: int) -> None:
    """Keep the `size` largest items in a min-heap."""
    if len(heap) < size:
        heapq.heappush(heap, item)
    elif item > heap[0]:
        heapq.heapreplace(heap, item)


def figure(source: str | None, file: str, probability: float) -> str:
    name = html.escape(Path(file).name)
    image = f'<img src="{source}" alt="{name}">' if source else '<p class="muted">(cannot be read now)</p>'
    return (
        f'<figure title="{html.escape(file)}">{image}<figcaption>{name}<br>P = {probability:.3f}</figcaption></figure>'
    )
