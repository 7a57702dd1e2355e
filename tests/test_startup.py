"""``mttag --help``, ``--version`` and ``mttag models`` answer without importing torch
(about 2 s of a cold start): the library's API and the heavy modules load on first use."""

from __future__ import annotations

import subprocess
import sys

import pytest

PROBE = """
import sys
from typer.testing import CliRunner
from mttag.cli import app
args = sys.argv[1:]
result = CliRunner().invoke(app, args)
assert result.exit_code == 0, (args, result.output)
import mttag
mttag.__version__, mttag.ModelLoadError
print("torch" in sys.modules)
"""


@pytest.mark.parametrize("args", [["--help"], ["--version"], ["models"], ["tag", "--help"], ["train", "--help"]])
def test_no_torch_for_help_version_and_models(args):
    out = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "False", f"{args} imported torch"


def test_lazy_api_still_works():
    out = subprocess.run([sys.executable, "-c", "import mttag, sys; mttag.Tagger; print('torch' in sys.modules, "
                          "sorted(set(mttag.__all__) - set(dir(mttag))))"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "True []"


@pytest.mark.parametrize("args", [["--help"], ["--version"], ["tag", "--help"], ["similar", "--help"]])
def test_help_does_not_import_numpy_or_the_decoders(args):
    """numpy and libsndfile cost ~0.1 s of every start: the command modules import them
    (and mttag.inference.index, mttag.inference.output, mttag.audio.decode) inside the commands that use them."""
    probe = PROBE.replace('print("torch" in sys.modules)', 'print(sorted(m for m in ("numpy", "soundfile", "soxr") if m in sys.modules))')
    out = subprocess.run([sys.executable, "-c", probe, *args], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]", f"{args} imported {out.stdout.strip().splitlines()[-1]}"
