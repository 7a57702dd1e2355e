"""What a catalogue run reads and where it writes: local or shared folders, manifests
(lists of paths: ``.txt``/``.lst``/``.m3u``, ``.csv`` or ``.parquet``) and object-store URIs
(``s3://bucket/prefix``, ``gs://...``), through pyarrow's filesystems (fsspec for schemes
pyarrow lacks). Credentials, regions and endpoints come from the standard environment
(``AWS_ACCESS_KEY_ID``, ``AWS_ENDPOINT_URL``, ``GOOGLE_APPLICATION_CREDENTIALS``, ...).

A track is named by one string: an absolute local path, or its URI. That string is what
the results' ``path`` column holds and what ``--resume`` matches.
"""

from __future__ import annotations

import csv
import io
import os
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from ..audio.files import AUDIO_EXTENSIONS, UnlistableFolder, iter_audio_files
from ..inference.output import is_uri

MANIFEST_TEXT = (".txt", ".lst", ".m3u", ".m3u8")
MANIFEST_SUFFIXES = MANIFEST_TEXT + (".csv", ".tsv", ".parquet")
# Bytes copied at a time from an object store into a track's local temporary file.
_COPY_CHUNK = 4 << 20


def bucket_root(uri: str) -> str:
    """``s3://bucket`` for ``s3://bucket/a/b.mp3``: the unit a filesystem is resolved for."""
    scheme, _, rest = uri.partition("://")
    return f"{scheme}://{rest.split('/', 1)[0]}"


def filesystem(uri: str):
    """``(pyarrow filesystem, path inside it)`` for a URI or a local path."""
    from pyarrow import fs as pafs

    if not is_uri(uri):
        return pafs.LocalFileSystem(), os.path.abspath(uri.removeprefix("file://"))
    try:
        return pafs.FileSystem.from_uri(uri)
    except (ValueError, TypeError, OSError, ImportError) as first:
        # a scheme pyarrow was built without (gs, az, hf...): fsspec's, if installed
        try:
            import fsspec
            from pyarrow.fs import FSSpecHandler, PyFileSystem

            fs, path = fsspec.core.url_to_fs(uri)
        except (ImportError, ValueError) as exc:
            raise ValueError(f"cannot open {uri} ({str(first).splitlines()[0]}; fsspec: {exc})") from None
        return PyFileSystem(FSSpecHandler(fs)), path


@dataclass
class Listing:
    tracks: list[str] = field(default_factory=list)
    problems: list[tuple[str, str]] = field(default_factory=list)  # (source, reason): a row with an error each


def _manifest_entries(path: Path) -> list[str]:
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        column = "path" if "path" in table.column_names else table.column_names[0]
        return [str(v) for v in table.column(column).to_pylist() if v]
    text = path.read_text(encoding="utf-8-sig", errors="surrogateescape")
    if suffix in (".csv", ".tsv"):
        rows = list(csv.reader(io.StringIO(text), delimiter="\t" if suffix == ".tsv" else ","))
        if not rows:
            return []
        column = rows[0].index("path") if "path" in rows[0] else 0
        body = rows[1:] if "path" in rows[0] else rows
        return [r[column].strip() for r in body if len(r) > column and r[column].strip()]
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def list_tracks(inputs: Iterable[str | os.PathLike]) -> Listing:
    """Every track under ``inputs``, each once, in a stable order. A folder or bucket
    prefix is searched recursively for audio files; a manifest's relative entries are
    relative to the manifest's folder; a source that cannot be listed is a problem (it
    becomes a result row with its error), never a silent gap."""
    out = Listing()
    seen: set[str] = set()

    def add(track: str) -> None:
        if track not in seen:
            seen.add(track)
            out.tracks.append(track)

    def local(paths: list[Path]) -> None:
        def report(problem: UnlistableFolder) -> None:
            out.problems.append((problem.path, f"cannot list this folder ({problem.reason})"))

        for p in iter_audio_files(paths, on_error=report):
            add(os.path.abspath(p))

    for item in inputs:
        text = os.fspath(item)
        if is_uri(text):
            _list_uri(text, add, out)
            continue
        path = Path(text).expanduser()
        if path.is_file() and path.suffix.lower() in MANIFEST_SUFFIXES:
            try:
                entries = _manifest_entries(path)
            except (OSError, ValueError, UnicodeDecodeError) as exc:
                out.problems.append((text, f"cannot read this manifest ({getattr(exc, 'strerror', None) or exc})"))
                continue
            for entry in entries:
                if is_uri(entry):
                    _list_uri(entry, add, out)
                else:
                    local([path.parent / Path(entry).expanduser()])
            continue
        local([path])
    return out


def _list_uri(uri: str, add, out: Listing) -> None:
    from pyarrow.fs import FileSelector, FileType

    try:
        fs, base = filesystem(uri)
        info = fs.get_file_info(base)
        if info.type == FileType.File or Path(base).suffix.lower() in AUDIO_EXTENSIONS and info.type == FileType.NotFound:
            add(uri)  # a missing file is reported by the decoder, like a local one
            return
        if info.type == FileType.NotFound:
            out.problems.append((uri, "cannot list this folder (no such bucket or prefix)"))
            return
        infos = fs.get_file_info(FileSelector(base, recursive=True))
    except (OSError, ValueError) as exc:
        out.problems.append((uri, f"cannot list this folder ({str(exc).splitlines()[0][:160]})"))
        return
    root = bucket_root(uri) if "://" in uri else ""
    scheme = uri.split("://", 1)[0]
    names = []
    for i in infos:
        name = i.base_name
        if i.type == FileType.File and not name.startswith(".") and Path(name).suffix.lower() in AUDIO_EXTENSIONS:
            names.append(i.path)
    for p in sorted(names):
        # pyarrow's paths are bucket/key: the track keeps the URI form it was asked for
        add(f"{scheme}://{p}" if root else p)


class LocalCopy:
    """A track as a local file for the decoders: a local path as it is; an object-store
    file copied in chunks to a temporary file (removed on exit), so an hour-long track
    costs disk, not memory. The copy keeps the name's extension, which picks the decoder."""

    def __init__(self, track: str, filesystems: dict[str, object] | None = None):
        self.track = track
        self.filesystems = filesystems or {}
        self.path: str | None = None
        self._tmp: str | None = None

    def __enter__(self) -> str:
        if not is_uri(self.track):
            self.path = self.track
            return self.path
        fs = self.filesystems.get(bucket_root(self.track))
        if fs is None:
            fs, inner = filesystem(self.track)
        else:
            inner = self.track.split("://", 1)[1]
        suffix = Path(inner).suffix
        fd, self._tmp = tempfile.mkstemp(prefix="mttag-", suffix=suffix)
        try:
            with os.fdopen(fd, "wb") as dst:
                try:
                    src = fs.open_input_stream(inner)
                except FileNotFoundError:
                    raise OSError(f"no such file in {bucket_root(self.track)}") from None
                with src:
                    shutil.copyfileobj(src, dst, _COPY_CHUNK)
        except BaseException:  # __exit__ never runs for a failed __enter__: the copy goes here
            os.unlink(self._tmp)
            self._tmp = None
            raise
        self.path = self._tmp
        return self.path

    def __exit__(self, *exc) -> bool:
        if self._tmp is not None:
            Path(self._tmp).unlink(missing_ok=True)
        return False
