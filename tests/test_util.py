"""mttag.util: the one copy of file hashing, folder syncs and one-line messages the package uses."""

import pytest

from mttag import constants, errors
from mttag.filetags import atomic, undolog
from mttag.filetags import writer as filetags
from mttag.runs import write as runs_write
from mttag.util import fs, hashing, text
from mttag.weights import download, hub


def test_hashes_of_a_known_file(tmp_path):
    path = tmp_path / "hello"
    path.write_bytes(b"hello\n")
    # what `git hash-object`, `sha256sum` and `sha1sum` print for this file
    assert hashing.git_blob_sha1(path) == "ce013625030ba8dba906f756967f9e9ca394464a"
    assert hashing.file_sha256(path) == "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03"
    assert hashing.file_hash(path, "sha1") == hashing.git_blob_sha1(path)
    assert hashing.file_hash(path, "sha256") == hashing.file_sha256(path)
    assert hashing.file_hash(path, "plain-sha1") == "f572d396fae9206628714fb2ce00f72e94f2258f"


def test_modules_share_one_copy_of_each_helper():
    assert download.git_blob_sha1 is hashing.git_blob_sha1 and download.file_hash is hashing.file_hash
    assert filetags.file_sha256 is hashing.file_sha256
    assert atomic.fsync_dir is fs.fsync_dir
    assert undolog.regular_or_missing is fs.regular_or_missing and runs_write.regular_or_missing is fs.regular_or_missing
    assert not hasattr(hub, "_sha256") and not hasattr(hub, "_git_blob_sha1")
    assert download.is_offline is hub.is_offline


@pytest.mark.parametrize("message,limit,expected", [
    (ValueError("bad\n   header\tline"), 500, "bad header line"),
    (ValueError(), 500, "ValueError"),
    ("x" * 20, 5, "xxxxx"),
    ("  padded  ", 500, "padded"),
])
def test_one_line(message, limit, expected):
    assert text.one_line(message, limit) == expected


def test_short_repr():
    assert text.short_repr("abc") == "'abc'"
    long = text.short_repr("y" * 100)
    assert len(long) == 60 and long.endswith("...") and long.startswith("'yyy")


def test_fsync_dir_never_raises(tmp_path):
    fs.fsync_dir(tmp_path)
    fs.fsync_dir(tmp_path / "missing")  # a folder that went away: nothing to sync


def test_constants_keep_their_old_home():
    for name in ("CONFIG_NAME", "WEIGHTS_NAME", "CARD_NAME", "DEFAULT_WINDOWS"):
        assert getattr(errors, name) is getattr(constants, name)


def test_atomic_write_syncs_the_new_file_before_the_rename_and_the_folder_after(tmp_path, monkeypatch):
    """A checkpoint renamed into place before its bytes reach the disk can be empty after a
    power cut, with the previous one gone: the order matters, not only that fsync is called."""
    import os

    from mttag.util import fileio

    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: events.append(("fsync", os.path.realpath(f"/proc/self/fd/{fd}")))
                        or real_fsync(fd))
    monkeypatch.setattr(os, "replace", lambda a, b: events.append(("replace", str(a), str(b))) or real_replace(a, b))
    target = tmp_path / "checkpoint.pt"
    fileio.atomic_write(target, lambda p: p.write_bytes(b"weights"))
    assert target.read_bytes() == b"weights"
    kinds = [e[0] for e in events]
    assert kinds == ["fsync", "replace", "fsync"], events
    tmp = events[1][1]
    assert events[0][1] == tmp and events[2][1] == str(tmp_path)
    assert not [p for p in tmp_path.iterdir() if p.name != "checkpoint.pt"]
