"""``mttag distill``: noisy student knowledge distillation into a new (usually smaller) student."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from ._common import app, augment_probabilities, fail
from .train import check_device, run_rounds


def student_settings(student: str) -> tuple[str, dict | None]:
    """(preset, full config dict or None) for --student small|teacher|large|tiny|CONFIG.json."""
    if student.endswith(".json"):
        try:
            cfg = json.loads(Path(student).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            fail(f"--student {student}: cannot read ({exc})")
        if "arch" not in cfg:
            fail(f"--student {student}: a student config needs at least 'arch' (and usually 'params')")
        cfg.setdefault("tags", [])
        return cfg.get("preset") or "custom", cfg
    from ..models import presets

    if student not in presets("transformer"):
        fail(f"--student {student}: expected one of {', '.join(presets('transformer'))} or a CONFIG.json")
    return student, None


@app.command()
def distill(
    paths: List[Path] = typer.Argument(..., metavar="[DATASET] OUT_DIR", help="A prepared dataset (optional: without one, only --unlabeled audio and the teacher's labels are used) and the run directory."),
    teacher: str = typer.Option(..., "--teacher", help="Trained model: directory, registered name (e.g. msd-musicnn) or Hub id."),
    student: str = typer.Option("small", "--student", help="small, teacher, large, tiny, or a CONFIG.json for a custom student."),
    unlabeled: Optional[List[Path]] = typer.Option(None, "--unlabeled", help="Extra unlabelled audio: folders or a prepared dataset."),
    rounds: int = typer.Option(1, "--rounds", min=1, help="Iterate: each student becomes the next teacher."),
    augment: bool = typer.Option(True, "--augment/--no-augment"),
    augment_p: Optional[List[str]] = typer.Option(None, "--augment-p", metavar="NAME=P", help="Change one augmentation's probability (repeatable): polarity, noise, gain, filter, delay, pitch_shift, reverb; e.g. --augment-p reverb=0 when reverb is one of your tags."),
    crop_seconds: Optional[float] = typer.Option(None, "--crop-seconds"),
    batch_size: int = typer.Option(32, "--batch-size", min=2),
    lr: float = typer.Option(1e-4, "--lr"),
    max_epochs: int = typer.Option(200, "--max-epochs", min=1),
    patience: int = typer.Option(20, "--patience", min=1),
    steps_per_epoch: Optional[int] = typer.Option(None, "--steps-per-epoch", min=1),
    eval_chunks: int = typer.Option(8, "--eval-chunks", min=1),
    unlabeled_fraction: float = typer.Option(0.5, "--unlabeled-fraction", min=0.05, max=0.95),
    pseudo_weight: float = typer.Option(1.0, "--pseudo-weight", min=0.0),
    device: str = typer.Option("auto", "--device"),
    workers: int = typer.Option(2, "--workers", min=0),
    seed: int = typer.Option(0, "--seed"),
    resume: bool = typer.Option(False, "--resume"),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Knowledge distillation: a student learns from labelled data plus the teacher's soft labels on augmented unlabelled audio."""
    from ..training import TrainConfig

    if len(paths) > 2:
        fail("expected [DATASET] OUT_DIR")
    dataset, out_dir = (paths[0], paths[1]) if len(paths) == 2 else (None, paths[0])
    if dataset is None and not unlabeled:
        fail("without a DATASET, give --unlabeled DIR: the student needs audio to learn from")
    preset, student_cfg = student_settings(student)
    check_device(device)
    cfg = TrainConfig(arch=(student_cfg or {}).get("arch", "transformer"), preset=preset, student_config=student_cfg,
                      crop_seconds=crop_seconds, batch_size=batch_size, lr=lr, max_epochs=max_epochs, patience=patience,
                      steps_per_epoch=steps_per_epoch, eval_chunks=eval_chunks, augment=augment, augment_probabilities=augment_probabilities(augment_p), device=device,
                      workers=workers, seed=seed, teacher=teacher, unlabeled_fraction=unlabeled_fraction,
                      pseudo_weight=pseudo_weight)
    run_rounds(dataset, out_dir, cfg, rounds, resume, unlabeled, quiet)
