#!/usr/bin/env python3
"""Convert musicnn's TensorFlow checkpoints into mttag model directories.

TensorFlow is needed to run this script only (to read the checkpoints); the
converted models are plain safetensors + config.json and run without it.

    pip download --no-deps musicnn==0.1.0 -d /tmp/musicnn_pkg
    python3 -m venv --system-site-packages /tmp/tfenv
    /tmp/tfenv/bin/pip install tensorflow-cpu 'numpy<2'
    PYTHONPATH=. /tmp/tfenv/bin/python scripts/convert_musicnn.py \\
        --source /tmp/musicnn_pkg/musicnn-0.1.0-py3-none-any.whl

writes ``mttag/data/models/msd-musicnn`` and ``mttag/data/models/mtt-musicnn``.
``--source`` takes the wheel, or a folder holding the unpacked ``musicnn`` package.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import re
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mttag.weights.modelfile import save_model  # noqa: E402
from mttag.models import ModelConfig, build_model  # noqa: E402
from mttag.models.musicnn import DEFAULTS, PATCH_SECONDS, PRESETS  # noqa: E402

CONVERTER_VERSION = "1"
MUSICNN_VERSION = "0.1.0"
UPSTREAM = "https://github.com/jordipons/musicnn"
COPYRIGHT = "Copyright (c) Music Technology Group, Universitat Pompeu Fabra 2019. Code developed by Jordi Pons (www.jordipons.me)."

# Published test-set results, as shipped in each checkpoint's experiment.result
# (checked against that file below) and in the musicnn documentation.
MODELS = {
    "msd-musicnn": dict(
        checkpoint="MSD_musicnn", labels="MSD_LABELS", preset="msd",
        datasets=["msd"], dataset_name="Million Song Dataset (last.fm top-50 tags)",
        title="musicnn, Million Song Dataset (msd-musicnn)",
        metrics={"roc_auc": 0.8801927178090048, "pr_auc": 0.28906431196994925},
    ),
    "mtt-musicnn": dict(
        checkpoint="MTT_musicnn", labels="MTT_LABELS", preset="mtt",
        datasets=["magnatagatune"], dataset_name="MagnaTagATune (top-50 tags)",
        title="musicnn, MagnaTagATune (mtt-musicnn)",
        metrics={"roc_auc": 0.9066769123674747, "pr_auc": 0.38310571748763617},
    ),
}

# TF variable scope -> mttag module, in the order musicnn's graph creates them
# (tf.compat.v1.layers numbers unnamed layers conv2d, conv2d_1, ... in creation order).
BATCH_NORMS = ["input_bn", "timbral.0.bn", "timbral.1.bn", "temporal.0.bn", "temporal.1.bn", "temporal.2.bn",
               "midend.0.bn", "midend.1.bn", "midend.2.bn", "pool_bn", "dense_bn"]
CONVS = ["timbral.0.conv", "timbral.1.conv", "temporal.0.conv", "temporal.1.conv", "temporal.2.conv",
         "midend.0.conv", "midend.1.conv", "midend.2.conv"]
DENSES = ["dense", "head"]


def _tf_name(kind: str, i: int) -> str:
    return kind if i == 0 else f"{kind}_{i}"


def read_labels(package: Path) -> dict[str, list[str]]:
    """The tag lists from musicnn's configuration.py, read without importing it."""
    tree = ast.parse((package / "configuration.py").read_text(encoding="utf-8"))
    labels = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            name = node.targets[0].id
            if name.endswith("_LABELS"):
                labels[name] = list(ast.literal_eval(node.value))
    return labels


def read_published(result_file: Path) -> list[float]:
    """The two numbers (ROC-AUC, PR-AUC) of an experiment.result file."""
    return [float(x) for x in re.findall(r"AUC:\s*([0-9.]+)", result_file.read_text())]


def read_checkpoint(ckpt_dir: Path) -> dict[str, np.ndarray]:
    import tensorflow as tf  # only the converter needs TensorFlow

    # musicnn's checkpoints have an empty file prefix (".index", ".data-..."), so the
    # prefix is the folder with a trailing slash; its "checkpoint" file names the
    # author's machine and cannot be used.
    reader = tf.compat.v1.train.NewCheckpointReader(str(ckpt_dir) + "/")
    names = reader.get_variable_to_shape_map()
    # drop Adam slots and optimiser scalars: inference needs only the model variables
    return {n: reader.get_tensor(n) for n in names if "Adam" not in n and not n.endswith("_power")}


def convert_state(tf_vars: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    state: dict[str, np.ndarray] = {}
    used = set()

    def take(name: str) -> np.ndarray:
        used.add(name)
        return tf_vars[name]

    for i, module in enumerate(BATCH_NORMS):
        scope = _tf_name("batch_normalization", i)
        state[f"{module}.weight"] = take(f"{scope}/gamma")
        state[f"{module}.bias"] = take(f"{scope}/beta")
        state[f"{module}.running_mean"] = take(f"{scope}/moving_mean")
        state[f"{module}.running_var"] = take(f"{scope}/moving_variance")
        state[f"{module}.num_batches_tracked"] = np.array(0, dtype=np.int64)
    for i, module in enumerate(CONVS):
        scope = _tf_name("conv2d", i)
        kernel = take(f"{scope}/kernel")  # TF: [time, freq-or-channels, in=1, out]
        if module.startswith("midend"):
            # a [7, C] kernel over a T×C×1 map is a Conv1d over T with C input channels
            weight = kernel[:, :, 0, :].transpose(2, 1, 0)  # out × C × time
        else:
            weight = kernel.transpose(3, 2, 0, 1)  # out × in × time × freq
        state[f"{module}.weight"] = weight
        state[f"{module}.bias"] = take(f"{scope}/bias")
    for i, module in enumerate(DENSES):
        scope = _tf_name("dense", i)
        state[f"{module}.weight"] = take(f"{scope}/kernel").T  # TF: in × out
        state[f"{module}.bias"] = take(f"{scope}/bias")
    left = sorted(set(tf_vars) - used)
    if left:
        raise SystemExit(f"checkpoint has variables this converter does not map: {left}")
    # np.ascontiguousarray would turn the 0-d counters into 1-d arrays
    return {k: torch.from_numpy(np.array(v, order="C", copy=True)) for k, v in state.items()}


def card_body(key: str, spec: dict, sha256: str) -> str:
    ckpt = spec["checkpoint"]
    return f"""\
A PyTorch port of **musicnn** `{ckpt}` (Pons & Serra 2019), converted from the
TensorFlow checkpoint in the PyPI package [`musicnn` {MUSICNN_VERSION}](https://pypi.org/project/musicnn/{MUSICNN_VERSION}/)
(upstream: {UPSTREAM}) by `scripts/convert_musicnn.py`. The weights are the
originals, unchanged, stored as float32; no TensorFlow is needed to run them.
The metrics below are the ones musicnn published for this checkpoint on its
test split; they were not re-measured here.

## Input

16 kHz mono. A window of 47872 samples (2.992 s, 187 STFT hops) gives exactly
the 187-frame patch musicnn was trained on; mttag tags a track as the mean of the
sigmoid outputs over such windows, as musicnn's own tagger averages over its
non-overlapping 187-frame patches. The log-mel front end is inside the model:
512-point STFT (periodic Hann, centred), hop 256, 96 Slaney mel bands up to
8 kHz, power spectrum, then `log10(10000·x + 1)`.

**numpy 1 vs numpy 2.** musicnn rounds the mel spectrogram to float16 and then
computes `np.log10(10000 * x + 1)`. Under numpy 1 (which musicnn pins) the
product is promoted to float32; under numpy 2 it stays float16 and overflows to
`inf` for any mel value above 6.55, which is common in real music, so musicnn's
own code gives wrong tags under numpy 2. This port keeps the float16 rounding of
the mel values (what the network saw) but computes the compression in float32,
as numpy 1 did.

**Fidelity** (`benchmarks/musicnn_fidelity.py`, details and speed in mttag's
`docs/musicnn.md`): given the same log-mel patches, the sigmoid outputs of this
port and of the TensorFlow graph differ by less than 1e-5 (max abs over 70
patches of 7 music clips); given the same audio files and musicnn's own
patching, the track-level top-5 tags are identical on 7 of 7 clips.

## License and citation

The weights are musicnn's, under the ISC license:

> {COPYRIGHT}
>
> Permission to use, copy, modify, and/or distribute this software for any purpose with or without fee is
> hereby granted, provided that the above copyright notice and this permission notice appear in all copies.
>
> THE SOFTWARE IS PROVIDED "AS IS" AND THE AUTHOR DISCLAIMS ALL WARRANTIES WITH REGARD TO THIS SOFTWARE
> INCLUDING ALL IMPLIED WARRANTIES OF MERCHANTABILITY AND FITNESS. IN NO EVENT SHALL THE AUTHOR BE LIABLE FOR
> ANY SPECIAL, DIRECT, INDIRECT, OR CONSEQUENTIAL DAMAGES OR ANY DAMAGES WHATSOEVER RESULTING FROM LOSS OF USE,
> DATA OR PROFITS, WHETHER IN AN ACTION OF CONTRACT, NEGLIGENCE OR OTHER TORTIOUS ACTION, ARISING OUT OF OR IN
> CONNECTION WITH THE USE OR PERFORMANCE OF THIS SOFTWARE.

```bibtex
@inproceedings{{pons2019musicnn,
  title     = {{musicnn: pre-trained convolutional neural networks for music audio tagging}},
  author    = {{Pons, Jordi and Serra, Xavier}},
  booktitle = {{Late-breaking/demo session, 20th International Society for Music Information Retrieval Conference (ISMIR)}},
  year      = {{2019}}
}}
@inproceedings{{pons2018atscale,
  title     = {{End-to-end learning for music audio tagging at scale}},
  author    = {{Pons, Jordi and Nieto, Oriol and Prockup, Matthew and Schmidt, Erik M. and Ehmann, Andreas F. and Serra, Xavier}},
  booktitle = {{19th International Society for Music Information Retrieval Conference (ISMIR)}},
  year      = {{2018}}
}}
```

Source checkpoint: `musicnn/{ckpt}/.data-00000-of-00001`, sha256 `{sha256}`.
"""


def license_text(package_root: Path) -> str:
    found = sorted(package_root.glob("musicnn-*.dist-info/LICENSE*"))
    if found:
        return found[0].read_text(encoding="utf-8")
    return COPYRIGHT + "\n"


def convert(package: Path, out_dir: Path, names: list[str]) -> None:
    labels = read_labels(package)
    for key in names:
        spec = MODELS[key]
        ckpt_dir = package / spec["checkpoint"]
        published = read_published(ckpt_dir / "experiment.result")
        expected = [spec["metrics"]["roc_auc"], spec["metrics"]["pr_auc"]]
        if not np.allclose(published, expected):
            raise SystemExit(f"{ckpt_dir}/experiment.result says {published}, expected {expected}")
        data_file = ckpt_dir / ".data-00000-of-00001"
        sha256 = hashlib.sha256(data_file.read_bytes()).hexdigest()
        state = convert_state(read_checkpoint(ckpt_dir))

        config = ModelConfig(
            arch="musicnn",
            tags=labels[spec["labels"]],
            # every parameter spelled out, so a later change of a default cannot change these models
            params={**DEFAULTS, **PRESETS[spec["preset"]]},
            preset=spec["preset"],
            sample_rate=16000,
            crop_seconds=PATCH_SECONDS,
            provenance={
                "name": key,
                "title": spec["title"],
                "source": f"musicnn {MUSICNN_VERSION} (PyPI wheel), checkpoint {spec['checkpoint']}",
                "upstream": UPSTREAM,
                "authors": "Jordi Pons, Xavier Serra (Music Technology Group, Universitat Pompeu Fabra)",
                "paper": "Pons & Serra, musicnn: pre-trained convolutional neural networks for music audio tagging, ISMIR 2019 LBD",
                "license": "isc",
                "copyright": COPYRIGHT,
                "datasets": spec["datasets"],
                "dataset_name": spec["dataset_name"],
                "published_metrics": {"roc_auc": spec["metrics"]["roc_auc"], "pr_auc": spec["metrics"]["pr_auc"]},
                "checkpoint_sha256": sha256,
                "converter": f"scripts/convert_musicnn.py v{CONVERTER_VERSION}",
            },
        )
        model = build_model(config)
        expected_state = model.state_dict()
        for name, tensor in state.items():
            if tuple(tensor.shape) != tuple(expected_state[name].shape):
                raise SystemExit(f"{key}: {name} has shape {tuple(tensor.shape)}, model expects "
                                 f"{tuple(expected_state[name].shape)}")
        model.load_state_dict(state, strict=True)
        model.eval()
        target = out_dir / key
        save_model(model, target, metrics=dict(spec["metrics"]), card_body=card_body(key, spec, sha256))
        (target / "LICENSE").write_text(license_text(package.parent), encoding="utf-8")
        for f in target.iterdir():
            f.chmod(0o644)  # package data must be world-readable whatever the converting user's umask
        size = sum(f.stat().st_size for f in target.iterdir())
        print(f"{key}: {sum(t.numel() for t in state.values()):,} values -> {target} ({size / 1e6:.1f} MB)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, required=True,
                        help="musicnn-0.1.0-py3-none-any.whl, or a folder containing the unpacked musicnn package")
    parser.add_argument("--out", type=Path, default=ROOT / "mttag" / "data" / "models")
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=sorted(MODELS))
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        root = args.source
        if root.is_file():
            with zipfile.ZipFile(root) as whl:
                whl.extractall(tmp)
            root = Path(tmp)
        package = root / "musicnn" if (root / "musicnn").is_dir() else root
        if not (package / "configuration.py").is_file():
            raise SystemExit(f"{args.source}: no musicnn package there (expected musicnn/configuration.py)")
        convert(package, args.out, args.models)


if __name__ == "__main__":
    main()
