"""MODEL_CARD.md's corruption table is the code's (detector/corruptions.py): every kind, its family and its
parameter at each severity, so the card cannot drift from what training and evaluation apply."""

import pytest

from detector.corruptions import CORRUPTIONS, SEVERITIES, TYPES
from detector.paths import ROOT

CARD = ROOT / "MODEL_CARD.md"


def corruption_table() -> dict[str, list[str]]:
    """The rows of the card's corruption table by kind: family, parameter, then one cell per severity."""
    section = CARD.read_text().split("\n## Corruption table", 1)[1].split("\n## ", 1)[0]
    rows = [line.strip("|").split("|") for line in section.splitlines() if line.startswith("| ")]
    header, *kinds = ([cell.strip() for cell in row] for row in rows)
    assert header[3:] == [str(severity) for severity in SEVERITIES], header
    return {row[0]: row[1:] for row in kinds}


def value(cell: str) -> float:
    """A cell's number; a percentage (occlusion's area) as a fraction."""
    number = float(cell.rstrip("%"))
    return number / 100 if cell.endswith("%") else number


def test_the_card_lists_every_kind_in_its_family():
    table = corruption_table()
    assert list(table) == list(CORRUPTIONS)
    assert {kind: row[0] for kind, row in table.items()} == {kind: c.family for kind, c in CORRUPTIONS.items()}
    families = len(TYPES) - 1  # TYPES: clean, then the families
    assert f"{len(CORRUPTIONS)} kinds in {families} families" in CARD.read_text()


@pytest.mark.parametrize("kind", list(CORRUPTIONS))
def test_the_cards_severities_are_the_codes(kind):
    cells = corruption_table()[kind][2:]
    assert [value(cell) for cell in cells] == pytest.approx(list(CORRUPTIONS[kind].values)), kind
