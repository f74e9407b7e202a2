"""What `catalogan train` and `catalogan train show --follow` print: progress, warnings, the final summary.

Three modes, chosen once per command:
- `live`: a rich progress bar (step / total, steps/s, images/s, ETA, D and G losses, the last FID_fm) on a
  terminal, redrawn in place;
- `lines`: one plain line per progress update, when stdout is a pipe or a file (nothing redrawn, nothing cut);
- `json`: one JSON object per line on stdout (`{"event": "progress", …history line…}`, then
  `{"event": "summary", …}`), for scripts.
Warnings are one line each on stderr (JSON mode: `{"event": "warning", …}` on stdout). No torch here.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import click

Mode = Literal["live", "lines", "json"]


def choose_mode(as_json: bool) -> Mode:
    """`json` when asked, else `live` on a terminal and `lines` otherwise."""
    if as_json:
        return "json"
    return "live" if sys.stdout.isatty() else "lines"


def format_eta(seconds: float | None) -> str:
    """h:mm:ss, or ? when unknown."""
    if seconds is None or not math.isfinite(seconds):
        return "?"
    whole = max(0, int(seconds))
    return f"{whole // 3600}:{whole % 3600 // 60:02d}:{whole % 60:02d}"


def progress_text(line: Mapping[str, Any], steps: int | None) -> str:
    """One history line as text: `step 20/60 | 0.42 steps/s | 53 img/s | loss D 1.234 G 0.567 | ETA 0:01:35`."""
    total = "?" if steps is None else str(steps)
    text = (
        f"step {line['step']}/{total} | {float(line.get('steps_per_s', math.nan)):.2f} steps/s | "
        f"{float(line.get('images_per_s', math.nan)):.0f} img/s | loss D {float(line.get('d_loss', math.nan)):.3f} "
        f"G {float(line.get('g_loss', math.nan)):.3f} | ETA {format_eta(line.get('eta_s'))}"
    )
    if "fid_fm" in line:
        text += (
            f" | FID_fm {float(line['fid_fm']):.3f} | cond. acc. {float(line['conditional_accuracy']):.3f}"
        )
    return text


class ProgressView:
    """Shows each progress line once in the chosen mode; `close()` ends a live display."""

    def __init__(self, steps: int | None, mode: Mode):
        self.steps, self.mode = steps, mode
        self._progress: Any = None
        self._task: Any = None

    def line(self, line: Mapping[str, Any]) -> None:
        """One new history line."""
        for warning in line.get("warnings") or []:
            self.warning(f"step {line['step']}: {warning}")
        if self.mode == "json":
            click.echo(json.dumps({"event": "progress", **line}))
        elif self.mode == "lines":
            click.echo(progress_text(line, self.steps))
        else:
            self._live(line)

    def note(self, text: str) -> None:
        """A one-line status note (stderr, so stdout stays the progress and the summary)."""
        if self._progress is not None:
            self._progress.console.print(text, soft_wrap=True, highlight=False)
        else:
            click.echo(text, err=True)

    def warning(self, text: str) -> None:
        """A warning that matters, as one line."""
        if self.mode == "json":
            click.echo(json.dumps({"event": "warning", "message": text}))
        elif self._progress is not None:
            self._progress.console.print(f"[yellow]warning:[/yellow] {text}", soft_wrap=True, highlight=False)
        else:
            click.echo(f"warning: {text}", err=True)

    def _live(self, line: Mapping[str, Any]) -> None:
        from rich.progress import BarColumn, Progress, TextColumn

        if self._progress is None:
            self._progress = Progress(
                TextColumn("step {task.completed:.0f}/{task.total:.0f}"),
                BarColumn(bar_width=10),
                TextColumn("{task.fields[rates]}"),
                TextColumn("ETA {task.fields[eta]}"),
                TextColumn("{task.fields[losses]}"),
                TextColumn("{task.fields[quality]}"),
            )
            self._progress.start()
            self._task = self._progress.add_task(
                "train", total=self.steps, rates="", eta="?", losses="", quality=""
            )
        fields: dict[str, Any] = {
            "rates": f"{float(line.get('steps_per_s', math.nan)):.2f} it/s "
            f"{float(line.get('images_per_s', math.nan)):.0f} img/s",
            "eta": format_eta(line.get("eta_s")),
            "losses": f"D {float(line.get('d_loss', math.nan)):.3f} G {float(line.get('g_loss', math.nan)):.3f}",
        }
        if "fid_fm" in line:
            fields["quality"] = (
                f"FID_fm {float(line['fid_fm']):.2f} acc {float(line['conditional_accuracy']):.2f}"
            )
        self._progress.update(self._task, completed=line["step"], **fields)

    def close(self) -> None:
        """End the live display (the last frame stays on the terminal)."""
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


def aligned(rows: Sequence[Sequence[str]], header: Sequence[str] | None = None) -> str:
    """Rows as left-aligned columns, each as wide as its widest cell: never truncated, whatever the terminal."""
    table = [list(header)] if header else []
    table += [list(row) for row in rows]
    if not table:
        return ""
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in table
    )


def metric_rows(metrics: Mapping[str, Any]) -> list[list[str]]:
    """One row per scalar metric, then one per category for the per-category dicts (accuracy vs real etc.)."""
    rows = []
    for key, value in metrics.items():
        if isinstance(value, bool) or value is None:
            continue
        if isinstance(value, int | float):
            rows.append([key, f"{value:.4g}" if isinstance(value, float) else str(value)])
    per_class = metrics.get("per_class_accuracy")
    if isinstance(per_class, Mapping):
        real = metrics.get("real_per_class_accuracy") or {}
        fid = metrics.get("per_class_fid_fm") or {}
        for category, value in per_class.items():
            shown = f"{float(value):.3f}"
            if category in real:
                shown += f" (real {float(real[category]):.3f})"
            if category in fid:
                shown += f", FID_fm {float(fid[category]):.3f}"
            rows.append([f"accuracy {category}", shown])
    return rows


def summary_text(outcome: Mapping[str, Any]) -> str:
    """The final summary of `catalogan train`: what was written, the metrics, the gates, the next command."""
    summary = [
        [key, str(value)] for key, value in outcome.items() if key not in ("metrics", "gates", "next_command")
    ]
    parts = [aligned(summary)]
    metrics = metric_rows(outcome.get("metrics") or {})
    if metrics:
        parts.append(aligned(metrics, ["metric", "value"]))
    gates = outcome.get("gates") or []
    if gates:
        parts.append(
            aligned(
                [[g["gate"], g["bound"], g["value"], "pass" if g["passed"] else "FAIL"] for g in gates],
                ["gate", "bound", "value", "result"],
            )
        )
    if outcome.get("next_command"):
        parts.append(f"next: {outcome['next_command']}")
    return "\n\n".join(part for part in parts if part)
