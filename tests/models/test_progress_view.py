"""What `catalogan train` prints: progress lines, JSON lines, warnings, the final summary table."""

from __future__ import annotations

import json

import pytest

from models.progress_view import ProgressView, progress_text, summary_text

LINE = {"step": 20, "d_loss": 1.2345, "g_loss": 0.5, "steps_per_s": 0.42, "images_per_s": 53.7, "eta_s": 95.2}


def test_each_update_is_printed_once_as_a_line_or_as_json(capsys: pytest.CaptureFixture[str]) -> None:
    # Given a plain and a JSON view, and an evaluated line carrying a warning
    evaluated = {
        **LINE,
        "step": 40,
        "fid_fm": 3.21,
        "conditional_accuracy": 0.8,
        "warnings": ["collapse in 'bag'"],
    }
    plain = ProgressView(60, "lines")
    plain.line(LINE)
    plain.line(evaluated)
    out, err = capsys.readouterr()
    # Then each update is one line on stdout, with the quality figures when measured, the warning one line on stderr
    assert out.splitlines() == [
        "step 20/60 | 0.42 steps/s | 54 img/s | loss D 1.234 G 0.500 | ETA 0:01:35",
        "step 40/60 | 0.42 steps/s | 54 img/s | loss D 1.234 G 0.500 | ETA 0:01:35 | FID_fm 3.210 | cond. acc. 0.800",
    ]
    assert err.splitlines() == ["warning: step 40: collapse in 'bag'"]
    # And in JSON mode every update and warning is one JSON object per line
    ProgressView(60, "json").line(evaluated)
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [event["event"] for event in events] == ["warning", "progress"]
    assert events[1]["step"] == 40 and events[1]["fid_fm"] == 3.21


def test_the_summary_is_a_table_with_per_category_rows_gates_and_the_next_command() -> None:
    # Given a finished run's outcome with per-category metrics and two gates, one failing
    outcome = {
        "name": "fashion-cgan",
        "registered": "fashion-cgan@3",
        "metrics": {
            "conditional_accuracy": 0.885,
            "per_class_accuracy": {"shirt": 0.33, "bag": 0.99},
            "real_per_class_accuracy": {"shirt": 0.66, "bag": 0.97},
        },
        "gates": [
            {"gate": "min_conditional_accuracy", "bound": "≥ 0.9", "value": "0.885", "passed": False},
            {"gate": "min_cas", "bound": "≥ 0.75", "value": "0.81", "passed": True},
        ],
        "next_command": "catalogan models promote fashion-cgan@3 --force",
    }
    text = summary_text(outcome)
    # Then every metric is one line, categories beside their real accuracy, gates with pass/FAIL, then next
    assert "conditional_accuracy  0.885" in text
    assert "accuracy shirt        0.330 (real 0.660)" in text
    assert "min_conditional_accuracy  ≥ 0.9   0.885  FAIL" in text and "min_cas  " in text
    assert text.rstrip().endswith("next: catalogan models promote fashion-cgan@3 --force")


def test_progress_text_copes_with_an_unknown_eta() -> None:
    assert progress_text({**LINE, "eta_s": None}, None).endswith(
        "| ETA ?"
    ) and "step 20/? |" in progress_text(LINE, None)
