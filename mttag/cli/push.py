"""``mttag push``: publish a model directory to the Hugging Face Hub."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ._common import app, console, fail


@app.command()
def push(
    model_dir: Path = typer.Argument(..., help="Model directory (config.json + model.safetensors [+ README.md])."),
    repo_id: str = typer.Argument(..., help="Hub repo id owner/name (created if missing)."),
    private: bool = typer.Option(False, "--private", help="Create the repo as private (ignored if it exists)."),
    revision: Optional[str] = typer.Option(None, "--revision", "-r", help="Branch to commit to (created from main if missing)."),
    token: Optional[str] = typer.Option(None, "--token", help="Hub write token. Default: HF_TOKEN or `hf auth login`."),
    message: Optional[str] = typer.Option(None, "--message", "-m", help="Commit message."),
) -> None:
    """Upload config.json, model.safetensors and a model card (generated if missing) in one commit.

    Honours HF_ENDPOINT and HF_TOKEN. Prints the commit URL; load the model anywhere with
    [bold]--model owner/name[/] or pin this exact upload with [bold]--model owner/name@SHA[/].
    """
    from ..weights.hub import hub_endpoint, push_model
    from ..weights.modelfile import ModelLoadError

    console.print(f"Pushing {model_dir} to {hub_endpoint()}/{repo_id}" + (f" (branch {revision})" if revision else ""),
                  highlight=False)
    try:
        url = push_model(model_dir, repo_id, private=private, revision=revision, token=token, commit_message=message)
    except ModelLoadError as exc:
        fail(str(exc))
    sha = url.rstrip("/").rsplit("/", 1)[-1]
    typer.echo(url)
    console.print(f"Done. Use it with: mttag tag --model {repo_id}   (this exact upload: --model {repo_id}@{sha})",
                  highlight=False)
