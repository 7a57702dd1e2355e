"""``mttag models``: list the registered pretrained models and where their weights are."""

from __future__ import annotations

import json
from enum import Enum
from typing import List, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ._common import app, console, fail

_STATUS_STYLE = {"bundled": "green", "local": "green", "cached": "green", "not downloaded": "yellow",
                 "not available": "red"}
_STATUS_TEXT = {"not downloaded": "downloads on first use"}
_WIDE = 160  # below this many columns, one block per model instead of a table


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
        return f"{_num(roc)} / {_num(pr)}"
    return ", ".join(f"{k} {v:.3f}" for k, v in metrics.items() if isinstance(v, (int, float)))


def _num(value: float) -> str:
    """0.88 -> 0.880, 0.9217 -> 0.9217: at least three decimals, at most four."""
    text = f"{value:.4f}".rstrip("0")
    return text + "0" * max(0, 3 - len(text.partition(".")[2]))


def _short_where(entry) -> str:
    """The weights column of the wide table: a URL as host/.../file."""
    location = entry.get("location") or {}
    url = location.get("url")
    if not isinstance(url, str):
        return entry["where"]
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    tail = parts.path.rstrip("/").rsplit("/", 1)[-1]
    return entry["where"].replace(url, f"{parts.netloc}/.../{tail}" if parts.netloc else url)


def _tags(tags) -> str:
    if isinstance(tags, dict):
        return f"{tags.get('n_tags', '?')} ({tags.get('vocabulary', '?')})"
    return str(tags)


def _download(entry) -> str:
    from ..weights.download import human_size

    if entry.get("status") in ("bundled", "local"):
        return "-"
    size = entry.get("download_size")
    return f"~{human_size(size)}" if size else "?"


def _status(status: str) -> str:
    style = _STATUS_STYLE.get(status)
    text = _STATUS_TEXT.get(status, status)
    return f"[{style}]{text}[/]" if style else text


def _download_models(names: list[str], quiet: bool) -> None:
    from ..errors import ModelLoadError
    from ..weights.pretrained import resolve_model

    for name in names:
        try:
            directory = resolve_model(name, progress=not quiet)
        except ModelLoadError as exc:
            fail(str(exc))
        typer.echo(str(directory))
        if not quiet:
            console.print(f"{escape(name)}: ready in {escape(str(directory))}", highlight=False)


@app.command()
def models(
    fmt: ModelsFormat = typer.Option(ModelsFormat.table, "--format", "-f", help="table or json."),
    download: Optional[List[str]] = typer.Option(
        None, "--download", metavar="NAME",
        help="Download (and convert) NAME into the cache now, e.g. before going offline; repeatable. "
             "Prints the model directory.",
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="With --download: no progress bar."),
) -> None:
    """List known pretrained models: architecture, size, tags, published metrics, source, license,
    where the weights come from and whether they are here.

    Status: [bold]bundled[/] (ships with mttag), [bold]local[/] (a directory named by your registry),
    [bold]cached[/] (downloaded), [bold]downloads on first use[/] or [bold]not available[/].
    Use a NAME with [bold]--model NAME[/]; the default (*) is used when --model is omitted
    (set yours with MTTAG_MODEL). Add or override entries with MTTAG_REGISTRY=FILE or
    ~/.config/mttag/registry.json (see docs/models.md).
    """
    from ..errors import ModelLoadError
    from ..weights.registry import default_model_name, default_model_origin, list_models

    if download:
        _download_models(download, quiet)
        return
    try:
        entries = list_models()
        default, origin = default_model_name(), default_model_origin()
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
        columns = ("name", "arch", "params", "tags", "download", "ROC/PR-AUC", "license", "source", "weights", "status")
        for column in columns:
            table.add_column(column, justify="right" if column in ("params", "download", "ROC/PR-AUC") else "left",
                             no_wrap=column in ("name", "params", "download", "status"), overflow="fold")
        for e in entries:
            table.add_row(
                escape(e["name"]) + (" *" if e.get("default") else ""), escape(str(e.get("arch", "?"))),
                _params(e.get("params")), escape(_tags(e.get("tags"))), _download(e), _metrics(e.get("metrics")),
                escape(str(e.get("license", ""))), escape(str(e.get("source", ""))), escape(_short_where(e)),
                _status(e["status"]),
            )
        out.print(table)
    else:  # narrow terminals and pipes: one block per model
        for i, e in enumerate(entries):
            if i:
                out.print()
            out.print(f"[bold]{escape(e['name'])}[/]" + (" *" if e.get("default") else "")
                      + f"  {escape(str(e.get('arch', '?')))}, {_params(e.get('params'))} parameters, "
                      + f"{escape(_tags(e.get('tags')))} tags", soft_wrap=True)
            metrics = _metrics(e.get("metrics"))
            out.print(f"  source:   {escape(str(e.get('source', '')))}", soft_wrap=True)
            out.print(f"  license:  {escape(str(e.get('license', '')))}"
                      + (f"   published ROC-AUC / PR-AUC: {metrics}" if metrics else ""), soft_wrap=True)
            out.print(f"  weights:  {escape(e['where'])}", soft_wrap=True)
            download_note = "" if _download(e) in ("-", "?") else f" ({_download(e)})"
            out.print(f"  status:   {_status(e['status'])}" + (download_note if e["status"] == "not downloaded" else ""))
            if e.get("registry") != "mttag":
                out.print(f"  from:     {escape(str(e['registry']))}", soft_wrap=True)
    note = "* default (used without --model"
    if origin != "mttag":
        note += f"; set by {escape(origin)}"
    elif default:
        note += "; change it with MTTAG_MODEL"
    note += "); also --model DIR or --model owner/name\\[@revision]"
    if default and not any(e.get("default") for e in entries):
        note = f"default (used without --model, set by {escape(origin)}): {escape(default)}; also --model DIR or --model owner/name\\[@revision]"
    out.print(note, soft_wrap=True)
