"""``mttag distill``: noisy student knowledge distillation into a new (usually smaller) student."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer
from typer.core import TyperCommand

from ..models.params import preset_names
from ._common import app, fail, model_param_overrides, usage_error
from .train import _epoch_over, check_device, check_precision, make_config, option, run_rounds


def student_settings(student: str) -> tuple[str, dict | None]:
    """(preset, full config dict or None) for --student PRESET (a Transformer preset) or CONFIG.json."""
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


class DistillCommand(TyperCommand):
    """Usage ``mttag distill [OPTIONS] [DATASET] {OUT_DIR}``. Click fills positional
    arguments left to right, so the optional DATASET, which comes first, cannot be
    declared optional with a required OUT_DIR after it: both are declared optional and
    the command sorts them out, and this line says what is really required."""

    def collect_usage_pieces(self, ctx):
        return [self.options_metavar, "[DATASET]", "{OUT_DIR}"]


@app.command(cls=DistillCommand)
def distill(
    first: Optional[Path] = typer.Argument(None, metavar="DATASET", show_default=False, help="A dataset made by `mttag prepare`. Optional: without one, the student learns from --unlabeled audio and the teacher's labels only."),
    second: Optional[Path] = typer.Argument(None, metavar="OUT_DIR", show_default=False, help="Required. Run directory: checkpoint, metrics.jsonl and the student in OUT_DIR/model."),
    teacher: str = typer.Option(..., "--teacher", help="Trained model: directory, registered name (e.g. msd-musicnn) or Hub id."),
    student: str = typer.Option("small", "--student", help=f"{', '.join(preset_names('transformer'))} (the Transformer's presets), or a CONFIG.json for a custom student."),
    param: Optional[List[str]] = typer.Option(None, "--param", metavar="KEY=VALUE", help="Change one parameter of the student (repeatable), e.g. --param depth=2; applies to a preset or a CONFIG.json."),
    unlabeled: Optional[List[Path]] = option("unlabeled"),
    rounds: int = option("rounds"),
    augment: bool = option("augment"),
    augment_p: Optional[List[str]] = option("augment_p"),
    crop_seconds: Optional[float] = option("crop_seconds"),
    batch_size: int = option("batch_size"),
    lr: float = option("lr"),
    max_epochs: int = option("max_epochs"),
    patience: int = option("patience"),
    steps_per_epoch: Optional[int] = option("steps_per_epoch"),
    eval_chunks: int = option("eval_chunks"),
    epoch_over: str = option("epoch_over"),
    unlabeled_fraction: float = option("unlabeled_fraction"),
    pseudo_weight: float = option("pseudo_weight"),
    device: str = option("device"),
    precision: str = option("precision"),
    workers: int = option("workers"),
    seed: int = option("seed"),
    resume: bool = option("resume"),
    quiet: bool = option("quiet"),
    force: bool = option("force"),
) -> None:
    """Knowledge distillation: a student learns from labelled data plus the teacher's soft labels on augmented unlabelled audio."""
    if first is None:
        usage_error("missing argument 'OUT_DIR'")
    # DATASET is optional but comes first: with one path given, it is OUT_DIR
    dataset, out_dir = (first, second) if second is not None else (None, first)
    if dataset is None and not unlabeled:
        fail("without a DATASET, give --unlabeled DIR: the student needs audio to learn from")
    preset, student_cfg = student_settings(student)
    arch = (student_cfg or {}).get("arch", "transformer")
    if student_cfg is not None:
        base = student_cfg.get("params") or {}
        student_cfg = {**student_cfg, "params": {**base, **model_param_overrides(param, arch, base=base)}}
        model_params = {}
    else:
        model_params = model_param_overrides(param, arch, preset=preset)
    check_device(device)
    cfg = make_config(teacher, augment_p, arch=arch, preset=preset, model_params=model_params,
                      student_config=student_cfg, augment=augment, crop_seconds=crop_seconds, batch_size=batch_size,
                      lr=lr, max_epochs=max_epochs, patience=patience, steps_per_epoch=steps_per_epoch, epoch_over=_epoch_over(epoch_over),
                      eval_chunks=eval_chunks, unlabeled_fraction=unlabeled_fraction, pseudo_weight=pseudo_weight,
                      device=device, workers=workers, seed=seed, precision=check_precision(precision, device, quiet))
    run_rounds(dataset, out_dir, cfg, rounds, resume, unlabeled, quiet, force)
