"""Write a few short synthetic tracks (chords, bass, drums, noise) in several formats,
so the quick-start has something to tag on a machine with no music on it.

    python examples/make_demo_audio.py demo_music

The generator lives in the package (:mod:`mttag.audio.demo`), so an installed mttag has it
too: ``mttag demo demo_music``.
"""

from __future__ import annotations

from mttag.audio.demo import main

if __name__ == "__main__":
    main()
