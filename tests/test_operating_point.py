"""How steady the operating point is: the photo offset refit on resamples of the validation source groups."""

import json

import numpy as np
import pytest

from detector.model import load_model
from evaluation.operating_point import main, outcomes, refits, validation_margins
from tests.test_photo_eval import case, index_cases


def test_outcomes_count_clean_flagged_and_damage_caught_at_each_offset():
    margins, labels = np.array([-1.0, 0.5, -2.0, 2.0]), np.array([0, 0, 1, 1])
    result = outcomes(np.array([0.0, 1.5, -1.0]), margins, labels)
    assert result["clean flagged"].tolist() == [0.5, 1.0, 0.0]
    assert result["caught"].tolist() == [0.5, 0.5, 0.5]
    assert result["right"].tolist() == [0.5, 0.25, 0.75]


def test_refits_move_only_as_far_as_the_groups_differ():
    """Groups alike give every draw the same offset; groups that differ give a spread, each draw's offset the one
    that flags the target share of its own clean images."""
    alike = np.tile(np.linspace(-3, 0, 10), 4)
    groups = [name for name in "abcd" for _ in range(10)]
    assert np.ptp(refits(alike, groups, 0.1, 50)) == pytest.approx(0, abs=1e-9)
    differ = alike + np.repeat([0.0, 1.0, 2.0, 3.0], 10)
    offsets = refits(differ, groups, 0.1, 50)
    assert np.ptp(offsets) > 1
    assert -offsets.max() >= np.quantile(differ[:10], 0.9) - 1e-9  # no draw more lenient than group a's alone


def test_the_command_refits_the_calibration_offset_on_the_validation_groups(trained, mini_corpus, tmp_path, capsys):
    """The mini corpus's model was calibrated on one group (scikit-learn): every resample is that group again, so
    every refit is the offset training.calibrate fitted; the held-out cases' margins come back from their scores."""
    model = trained / "model.pt"
    listed = [
        case("clean", 0, photo="matplotlib--grace-hopper"),
        case("blur", 1, "blur", 4, photo="matplotlib--grace-hopper"),
    ]
    (tmp_path / "s.json").write_text(json.dumps({"clean": 0.2, "blur": 0.9}))
    cases = str(index_cases(tmp_path / "cases", listed))
    arguments = ["--model", str(model), "--scores", str(tmp_path / "s.json"), "--cases", cases]
    main([*arguments, "--photos", str(mini_corpus), "--draws", "20"])
    output = capsys.readouterr().out
    assert "refit on 20 resamples of 1 validation source groups" in output
    row = next(line for line in output.splitlines() if line.startswith("| offset |"))
    fitted, *spread = [cell.strip() for cell in row.strip("|").split("|")[1:]]
    assert spread == [fitted] * 3
    assert "| clean flagged | 0.0% | 0.0% | 0.0% | 0.0% |" in output
    assert "| caught | 100.0% | 100.0% | 100.0% | 100.0% |" in output


def test_validation_photos_missing_from_the_corpus_are_named(trained, mini_corpus):
    model = load_model(trained / "model.pt")
    with pytest.raises(ValueError, match=r"1 of the checkpoint's validation photos .*: gone--photo"):
        validation_margins(model, ["scikit-learn--flower", "gone--photo"], mini_corpus)
