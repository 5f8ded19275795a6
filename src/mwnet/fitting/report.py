"""What ``mwnet fit`` prints: one table of the candidates, the choice, the model file and the
label-issue headline."""

from __future__ import annotations

from typing import IO, Any


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f} %"


def table(result: Any) -> str:
    """The Markdown table: every candidate's validation and test accuracy (the test set
    chose nothing), its training time, and why a candidate could not be chosen."""
    chosen = result.chosen
    lines = [
        f"| candidate | val acc ({result.val_samples} held out, noisy labels) | test acc | "
        "train time | |",
        "|---|---|---|---|---|",
    ]
    for e in result.entries:
        mark = "**chosen**" if e is chosen else (e.excluded or "")
        seconds = e.seconds
        time_text = "n/a" if seconds is None else f"{seconds / 60:.1f} min"
        mark = mark.replace("|", "/")
        lines.append(
            f"| {e.title} | {_pct(e.val_acc)} | {_pct(e.test_acc)} | {time_text} | {mark} |"
        )
    return "\n".join(lines)


def print_result(result: Any, stream: IO[str]) -> None:
    print(table(result), file=stream)
    print(f"\nchosen: {result.rule}", file=stream)
    if result.model_path is not None:
        print(
            f"model: {result.model_path} (apply it: mwnet predict {result.model_path} INPUTS)",
            file=stream,
        )
    if result.label_issues is not None:
        print(f"\nlabel issues, from the {result.issues_from} run:", file=stream)
        print(result.label_issues.headline(), file=stream)
    cpu = [e.cpu_seconds for e in result.entries if e.cpu_seconds is not None]
    spent = f"{sum(cpu) / 60:.1f} CPU min of training" if cpu else "training time not recorded"
    print(
        f"fit: {result.directory / 'fit.json'} ({spent} over {len(result.entries)} "
        f"candidates; {result.elapsed / 60:.1f} min of wall time now)",
        file=stream,
    )


def failure_line(result: Any) -> str | None:
    """The one ``mwnet: error`` line when no model could be shipped."""
    if result.model_path is not None:
        return None
    return f"mwnet: error: {result.rule}; the table shows why for each candidate"


__all__ = ["failure_line", "print_result", "table"]
