"""The tag table: one spelling and a kind per tag, near-duplicates merged (issue 35)."""

from __future__ import annotations

import json

import pytest

from mttag.constants import DATA_DIR
from mttag.inference import vocab

BUNDLED = DATA_DIR / "models"


def _bundled_tags(name: str) -> list[str]:
    return json.loads((BUNDLED / name / "config.json").read_text())["tags"]


@pytest.mark.parametrize("name, spelling, kind", [
    ("Progressive rock", "progressive rock", "genre"),
    ("House", "house", "genre"),
    ("Hip-Hop", "hip-hop", "genre"),
    ("Mellow", "mellow", "mood"),
    ("female vocalist", "female vocals", "voice"),
    ("female vocalists", "female vocals", "voice"),
    ("msd:female vocalists", "female vocals", "voice"),
    ("mtt:woman", "female vocals", "voice"),
    ("mtt:no vocals", "instrumental", "voice"),
    ("mtt:classic", "classical", "genre"),
    ("mtt:violin", "violin", "instrument"),
    ("80s", "80s", "era"),
    ("electronica", "electronic", "genre"),
])
def test_display_spelling_and_kind(name, spelling, kind):
    assert vocab.display(name) == spelling
    assert vocab.kind(name) == kind
    assert vocab.display(spelling) == spelling  # a displayed tag stays as it is


def test_unknown_tags_keep_their_spelling_and_are_other():
    assert vocab.display("Hyperpop  Vocals") == "Hyperpop  Vocals"
    assert vocab.display("lab:Bright Pad") == "Bright Pad"
    assert vocab.kind("Bright Pad") == "other"
    assert not vocab.known("Bright Pad")
    # a colon that is not a source prefix is part of the name
    assert vocab.display("a: b") == "a: b"


@pytest.mark.parametrize("tags", [vocab.MSD_TAGS, vocab.CALS_TAGS, _bundled_tags("mtt-musicnn"),
                                  _bundled_tags("msd-musicnn")])
def test_every_bundled_vocabulary_is_in_the_table(tags):
    assert [t for t in tags if not vocab.known(t)] == []
    for t in tags:
        shown = vocab.display(t)
        assert shown == " ".join(shown.lower().split())  # one spelling: lowercase, single spaces
        assert vocab.kind(t) in vocab.KINDS


def test_every_kind_in_the_table_is_a_known_kind():
    data = json.loads(vocab.VOCABULARY_PATH.read_text())
    assert set(data["tags"].values()) <= set(vocab.KINDS)
    # every merge lands on a tag of the table
    assert set(data["names"].values()) <= set(data["tags"])


def test_merge_groups_unify_duplicates_across_networks():
    names = ["msd:rock", "msd:female vocalists", "msd:female vocalist", "mtt:rock", "mtt:woman", "mtt:violin"]
    groups = vocab.merge_groups(names)
    assert groups == {"rock": [0, 3], "female vocals": [1, 2, 4], "violin": [5]}
    assert len(vocab.merge_groups(vocab.MSD_TAGS)) == 47  # female vocalist/s, electronica, chill merged
