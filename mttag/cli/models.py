"""``mttag models``: list the registered pretrained models and where their weights are."""

from __future__ import annotations

import json
from enum import Enum

import typer
from rich.console import Console
from rich.table import Table

from ._common import app, fail

_STATUS_STYLE = {"bundled": "green", "cached": "green", "not downloaded": "yellow", "not available": "red"}
_WIDE = 140  # below this many columns, one block per model instead of a table


class ModelsFormat(str, Enum):
    table = "table"
    json = "json"


def _params(value) -> str:
    if not isinstance(value, int):
        return "?"
    return f"{value / 1e6:.1f}M" if value >= 1_000_000 else f"{value / 1e3:.0f}k"


def _metrics(metrics) -> str:
    if not isinstance(metrics, dict) or not metrics:
        return ""
    roc, pr = metrics.get("roc_auc"), metrics.get("pr_auc")
    if isinstance(roc, (int, float)) and isinstance(pr, (int, float)):
        return f"{roc:.3f} / {pr:.3f}"
    return ", ".join(f"{k} {v:.3f}" for k, v in metrics.items() if isinstance(v, (int, float)))


def _tags(tags) -> str:
    if isinstance(tags, dict):
        return f"{tags.get('n_tags', '?')} ({tags.get('vocabulary', '?')})"
    return str(tags)


def _status(status: str) -> str:
    style = _STATUS_STYLE.get(status)
    return f"[{style}]{status}[/]" if style else status


@app.command()
def models(
    fmt: ModelsFormat = typer.Option(ModelsFormat.table, "--format", "-f", help="table or json."),
) -> None:
    """List known pretrained models: architecture, size, tags, source, license, where the weights live.

    Status: [bold]bundled[/] (ships with mttag), [bold]cached[/] (downloaded), [bold]not downloaded[/]
    (fetched on first use) or [bold]not available[/] (missing from this installation).
    Use a NAME with [bold]--model NAME[/]; the default (*) is used when --model is omitted.
    """
    from ..modelfile import ModelLoadError
    from ..registry import list_models

    try:
        entries = list_models()
    except ModelLoadError as exc:
        fail(str(exc))
    if fmt is ModelsFormat.json:
        typer.echo(json.dumps(entries, indent=2, ensure_ascii=False))
        return
    out = Console(highlight=False)
    if not entries:
        out.print("No models are registered in this installation.")
        return
    if out.width >= _WIDE:
        table = Table(title="mttag models", title_justify="left")
        for column in ("name", "arch", "params", "tags", "ROC/PR-AUC", "source", "license", "weights", "status"):
            table.add_column(column, justify="right" if column in ("params", "ROC/PR-AUC") else "left",
                             no_wrap=column in ("name", "params", "status"), overflow="fold")
        for e in entries:
            table.add_row(
                e["name"] + (" *" if e.get("default") else ""), str(e.get("arch", "?")), _params(e.get("params")),
                _tags(e.get("tags")), _metrics(e.get("metrics")), str(e.get("source", "")),
                str(e.get("license", "")), e["where"], _status(e["status"]),
            )
        out.print(table)
    else:  # narrow terminals and pipes: one block per model
        for i, e in enumerate(entries):
            if i:
                out.print()
            out.print(f"[bold]{e['name']}[/]" + (" *" if e.get("default") else "")
                      + f"  {e.get('arch', '?')}, {_params(e.get('params'))} parameters, {_tags(e.get('tags'))} tags")
            metrics = _metrics(e.get("metrics"))
            out.print(f"  source:   {e.get('source', '')}")
            out.print(f"  license:  {e.get('license', '')}" + (f"   ROC-AUC / PR-AUC: {metrics}" if metrics else ""))
            out.print(f"  weights:  {e['where']}")
            out.print(f"  status:   {_status(e['status'])}")
    out.print("* default (used without --model); also --model DIR or --model owner/name\\[@revision]", soft_wrap=True)
