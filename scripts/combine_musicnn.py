#!/usr/bin/env python3
"""Build the bundled ``musicnn`` model: the bundled ``msd-musicnn`` and ``mtt-musicnn`` networks on
one front end (:class:`mttag.models.musicnn.MusicnnMulti`), weights copied unchanged.

    PYTHONPATH=. python3 scripts/combine_musicnn.py mttag/data/models/musicnn
"""

from __future__ import annotations

import hashlib
import shutil
import sys
from pathlib import Path

import mttag
from mttag.weights.modelfile import save_model
from mttag.models.musicnn import MusicnnMulti

BODY = """The two released musicnn networks (Pons & Serra 2019) in one model: `msd-musicnn` (Million Song
Dataset, last.fm top-50: genres, moods, eras, voices) and `mtt-musicnn` (MagnaTagATune top-50:
instruments, classical, Indian, voices, tempo), run on one shared 16 kHz log-mel front end. Each
network's outputs are exactly those of its own model directory; the tags are named `msd:rock`,
`mtt:violin`, and mttag displays them with one spelling (mttag/data/vocabulary.json)."""


def main(out: str) -> int:
    models = {"msd": mttag.load_model("msd-musicnn"), "mtt": mttag.load_model("mtt-musicnn")}
    shas = {s: m.config.provenance["checkpoint_sha256"] for s, m in models.items()}
    revision = hashlib.sha256("".join(shas[s] for s in models).encode()).hexdigest()
    msd = models["msd"].config.provenance
    provenance = {
        "name": "musicnn",
        "title": "musicnn, MSD + MagnaTagATune networks on one front end (musicnn)",
        "source": "msd-musicnn + mtt-musicnn (musicnn 0.1.0 checkpoints MSD_musicnn and MTT_musicnn)",
        "upstream": msd["upstream"], "authors": msd["authors"], "paper": msd["paper"],
        "license": msd["license"], "copyright": msd["copyright"],
        "datasets": ["msd", "mtt"], "dataset_name": "Million Song Dataset + MagnaTagATune (top-50 tags each)",
        "checkpoint_sha256": revision, "networks_checkpoint_sha256": shas,
        "converter": "scripts/combine_musicnn.py v1",
        # two networks per window: at 12 windows per track it costs what msd-musicnn costs at 20
        # (mttag.inference.tagging.default_windows; measured in docs/tagging.md)
        "default_windows": 12,
    }
    model = MusicnnMulti.combine(models, provenance)
    save_model(model, out, card_body=BODY)
    shutil.copy(Path(mttag.__file__).parent / "data" / "models" / "msd-musicnn" / "LICENSE", Path(out) / "LICENSE")
    print(out, revision[:12])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
