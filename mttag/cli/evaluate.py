"""``mttag evaluate``: ROC-AUC and PR-AUC of a model on a prepared dataset split."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from ._common import app, fail, one_line
from .train import check_device


class EvalFormat(str, Enum):
    table = "table"
    json = "json"


@app.command()
def evaluate(
    model: str = typer.Argument(..., help="Model directory, registered name or Hub id."),
    dataset: Path = typer.Argument(..., help="A dataset made by `mttag prepare`."),
    split: str = typer.Option("test", "--split", help="train, valid or test."),
    chunks: int = typer.Option(8, "--chunks", "--eval-chunks", min=1, help="Evenly spaced crops per track, predictions averaged."),
    fmt: EvalFormat = typer.Option(EvalFormat.table, "--format", "-f"),
    device: str = typer.Option("auto", "--device"),
    batch_size: int = typer.Option(8, "--batch-size", min=1, help="Tracks per forward pass."),
    workers: int = typer.Option(0, "--workers", min=0),
) -> None:
    """Macro and per-tag ROC-AUC and PR-AUC (JSON: top-level roc_auc, pr_auc, per_tag)."""
    from ..errors import TrainingError
    from ..training.evaluation import evaluate as run_eval
    from ..training.store import PreparedDataset
    from ..weights.modelfile import ModelLoadError
    from ..weights.pretrained import load_model

    check_device(device)
    try:
        net = load_model(model)
        data = PreparedDataset(dataset)
        result = run_eval(net, data, split, chunks, device, batch_size, workers)
    except (ModelLoadError, TrainingError, OSError, ValueError) as exc:
        fail(str(exc))
    if fmt is EvalFormat.json:
        typer.echo(json.dumps(result, indent=2))
        return
    out = Console(highlight=False)
    table = Table(title=f"{one_line(model)} on {one_line(dataset)} ({one_line(split)}, {result['n_tracks']} tracks)")
    for col in ("tag", "ROC-AUC", "PR-AUC", "positives"):
        table.add_column(col, justify="left" if col == "tag" else "right")
    fmt_ = lambda v: "—" if v is None else f"{v:.4f}"  # noqa: E731
    for tag, m in result["per_tag"].items():
        table.add_row(one_line(tag), fmt_(m["roc_auc"]), fmt_(m["pr_auc"]), str(m["positives"]))
    table.add_section()
    table.add_row("[bold]macro[/]", f"[bold]{fmt_(result['roc_auc'])}[/]", f"[bold]{fmt_(result['pr_auc'])}[/]", "")
    out.print(table)
