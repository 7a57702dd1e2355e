"""The tags of one file through mutagen, by format: a handler per tag format (ID3 in MP3, WAV
and AIFF; Vorbis comments in FLAC, Ogg Vorbis and Opus; MP4 atoms) that gets, sets, captures
(for the undo log) and restores the fields of :data:`mttag.filetags.fields.FIELDS`, and lists
every other tag so a write can prove it left them alone. :func:`open_tags` picks the handler by
the file's content, not its name."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

from . import fields as _fields
from .outcome import WriteError, reason


class TagHandler:
    """The mttag fields of one open file, in its own format's keys (:mod:`.fields`); saved by :meth:`save`."""

    format = "?"
    id3_version: int | None = None
    join: str | None = None  # forced join separator (ID3v2.3)

    def get(self, name: str) -> list[str]:
        raise NotImplementedError

    def set(self, name: str, values: list[str]) -> None:
        raise NotImplementedError

    def capture(self, name: str) -> Any:
        raise NotImplementedError

    def restore(self, captured: Mapping[str, Any]) -> None:
        raise NotImplementedError

    def others(self, touched: Sequence[str]) -> Any:
        """Everything but the touched fields, in a comparable form (for verification)."""
        raise NotImplementedError

    def save(self) -> None:
        raise NotImplementedError


class _ID3Handler(TagHandler):
    def __init__(self, path: str, kind: str):
        from mutagen.id3 import ID3, ID3NoHeaderError

        self.path = path
        self.format = kind
        self.file = None
        junk: list[str] = []
        known = _watched_frames(junk)
        if kind == "mp3":
            try:
                self.tags = ID3(path, translate=False, load_v1=False, known_frames=known)
            except ID3NoHeaderError:
                self.tags = ID3()
                self.tags.version = (2, 4, 0)
        else:
            import mutagen.aiff
            import mutagen.wave

            cls = mutagen.wave.WAVE if kind == "wav" else mutagen.aiff.AIFF
            self.file = cls(path, translate=False, load_v1=False, known_frames=known)
            if self.file.tags is None:
                self.file.add_tags()
                self.file.tags.version = (2, 4, 0)
            self.tags = self.file.tags
        version = self.tags.version[1] if self.tags.version[0] == 2 else 4
        if version not in (3, 4):
            raise WriteError(f"ID3v2.{version} tag: only ID3v2.3 and v2.4 can be written (convert it with a tagger first)")
        if junk:
            # mutagen skips a frame it cannot parse and would save the tag without it
            raise WriteError(f"ID3 frame {', '.join(sorted(set(junk)))} cannot be parsed (bad text encoding or "
                             "compression); writing would drop it, so the file is left as it is")
        self.id3_version = version
        self.join = "/" if version == 3 else None
        self._v1 = None
        if kind == "mp3":
            with open(path, "rb") as f:
                f.seek(0, 2)
                if f.tell() >= 128:
                    f.seek(-128, 2)
                    tail = f.read(128)
                    if tail[:3] == b"TAG":
                        self._v1 = tail

    def _frames(self, name: str) -> list:
        key = _fields.id3_write_key(name, self.id3_version)
        if key.startswith("TXXX:"):
            return [f for f in self.tags.getall("TXXX") if f.desc.upper() == key[5:]]
        if key == "COMM":  # the comment players show: other COMM frames carry iTunes data (iTunNORM ...)
            return [f for f in self.tags.getall("COMM") if f.desc == ""]
        return self.tags.getall(key)

    def storage_keys(self, name: str) -> list[str]:
        return [f.HashKey for f in self._frames(name)]

    def get(self, name: str) -> list[str]:
        return [str(t) for f in self._frames(name) for t in f.text]

    def set(self, name: str, values: list[str]) -> None:
        import mutagen.id3

        old = self._frames(name)
        for f in old:
            del self.tags[f.HashKey]
        if not values:
            return
        enc = 3 if self.id3_version == 4 else 1
        if self.id3_version == 3 and len(values) > 1 and name != "comment":
            values = ["/".join(values)]
        key = _fields.id3_write_key(name, self.id3_version)
        if key.startswith("TXXX:"):
            frame = mutagen.id3.TXXX(encoding=enc, desc=old[0].desc if old else key[5:], text=values)
        elif key == "COMM":
            frame = mutagen.id3.COMM(encoding=enc, lang=old[0].lang if old else "eng", desc="", text=values)
        else:
            frame = getattr(mutagen.id3, key)(encoding=enc, text=values)
        self.tags.add(frame)

    def capture(self, name: str) -> Any:
        out = []
        for f in self._frames(name):
            item = {"frame": type(f).__name__, "encoding": int(f.encoding), "text": [str(t) for t in f.text]}
            for attr in ("desc", "lang"):
                if hasattr(f, attr):
                    item[attr] = getattr(f, attr)
            out.append(item)
        return out

    def restore(self, captured: Mapping[str, Any]) -> None:
        import mutagen.id3

        for name, frames in captured.items():
            for f in self._frames(name):
                del self.tags[f.HashKey]
            for item in frames:
                cls = getattr(mutagen.id3, item["frame"])
                kw = {k: item[k] for k in ("desc", "lang") if k in item}
                self.tags.add(cls(encoding=item["encoding"], text=item["text"], **kw))

    def others(self, touched: Sequence[str]) -> Any:
        skip = {k for name in touched for k in self.storage_keys(name)}
        return {k: repr(v) for k, v in self.tags.items() if k not in skip}

    def save(self) -> None:
        if self.file is not None:
            self.file.save(v2_version=self.id3_version, v23_sep=None)
            return
        self.tags.save(self.path, v1=1, v2_version=self.id3_version, v23_sep=None)
        if self._v1 is not None:  # ID3v1 is left exactly as it was (mutagen would rewrite it)
            with open(self.path, "r+b") as f:
                f.seek(-128, 2)
                if f.read(3) == b"TAG":
                    f.seek(-128, 2)
                    f.write(self._v1)


class _WatchedFrame:
    """Stands in for a mutagen frame class while a tag loads, noting the frames that
    mutagen drops as junk (it says nothing and the next save would lose them)."""

    def __init__(self, cls, junk: list[str]):
        self.cls, self.junk = cls, junk

    def _fromData(self, header, tflags, data):
        from mutagen.id3 import ID3JunkFrameError

        try:
            return self.cls._fromData(header, tflags, data)
        except ID3JunkFrameError:
            self.junk.append(self.cls.__name__)
            raise


def _watched_frames(junk: list[str]) -> dict[str, Any]:
    from mutagen.id3 import Frames

    return {name: _WatchedFrame(cls, junk) for name, cls in Frames.items()}


class _VorbisHandler(TagHandler):
    def __init__(self, path: str, audio, kind: str):
        self.path = path
        self.file = audio
        self.format = kind
        if audio.tags is None:
            audio.add_tags()
        self.tags = audio.tags

    def _match(self, name: str, key: str) -> bool:
        return key.lower() == _fields.vorbis_keys(name)[0].lower()

    def get(self, name: str) -> list[str]:
        return [v for k, v in self.tags if self._match(name, k)]

    def set(self, name: str, values: list[str]) -> None:
        pairs = list(self.tags)
        idx = [i for i, (k, _) in enumerate(pairs) if self._match(name, k)]
        key = pairs[idx[0]][0] if idx else _fields.vorbis_keys(name)[0]
        at = idx[0] if idx else len(pairs)
        kept = [p for i, p in enumerate(pairs) if i not in set(idx)]
        new = kept[:at] + [(key, v) for v in values] + kept[at:]
        del self.tags[:]
        self.tags.extend(new)

    def capture(self, name: str) -> Any:
        return [[i, k, v] for i, (k, v) in enumerate(self.tags) if self._match(name, k)]

    def restore(self, captured: Mapping[str, Any]) -> None:
        names = list(captured)
        pairs = [(k, v) for k, v in self.tags if not any(self._match(n, k) for n in names)]
        for i, k, v in sorted((tuple(x) for items in captured.values() for x in items), key=lambda x: x[0]):
            pairs.insert(min(i, len(pairs)), (k, v))
        del self.tags[:]
        self.tags.extend(pairs)

    def others(self, touched: Sequence[str]) -> Any:
        pairs = [(k, v) for k, v in self.tags if not any(self._match(n, k) for n in touched)]
        blocks = []
        for block in getattr(self.file, "metadata_blocks", []):
            if block.code not in (1, 4):  # padding, Vorbis comment
                blocks.append((block.code, hashlib.sha256(block.write()).hexdigest()))
        return {"comments": pairs, "vendor": self.tags.vendor, "blocks": blocks}

    def save(self) -> None:
        self.file.save()


class _MP4Handler(TagHandler):
    format = "m4a"

    def __init__(self, path: str, audio):
        self.path = path
        self.file = audio
        if audio.tags is None:
            audio.add_tags()
        self.tags = audio.tags

    def _keys(self, name: str) -> list[str]:
        key = _fields.mp4_keys(name)[0]
        if not key.startswith("----:"):
            return [key] if key in self.tags else []
        want = key.rsplit(":", 1)[1].upper()
        return [k for k in self.tags.keys()
                if k.startswith("----:com.apple.iTunes:") and k.split(":", 2)[2].upper() == want]

    def storage_keys(self, name: str) -> list[str]:
        return self._keys(name)

    def get(self, name: str) -> list[str]:
        out = []
        for k in self._keys(name):
            for v in self.tags[k]:
                out.append(bytes(v).decode("utf-8", "replace") if isinstance(v, bytes) else str(v))
        return out

    def set(self, name: str, values: list[str]) -> None:
        from mutagen.mp4 import AtomDataType, MP4FreeForm

        old = self._keys(name)
        for k in old:
            del self.tags[k]
        if not values:
            return
        key = old[0] if old else _fields.mp4_keys(name)[0]
        if key.startswith("----:"):
            self.tags[key] = [MP4FreeForm(v.encode("utf-8"), dataformat=AtomDataType.UTF8) for v in values]
        else:
            self.tags[key] = list(values)

    def capture(self, name: str) -> Any:
        out = {}
        for k in self._keys(name):
            if k.startswith("----:"):
                out[k] = [{"data": base64.b64encode(bytes(v)).decode("ascii"), "dataformat": int(v.dataformat),
                           "version": int(getattr(v, "version", 0))} for v in self.tags[k]]
            else:
                out[k] = [str(v) for v in self.tags[k]]
        return out

    def restore(self, captured: Mapping[str, Any]) -> None:
        from mutagen.mp4 import MP4FreeForm

        for name, items in captured.items():
            for k in self._keys(name):
                del self.tags[k]
            for k, values in items.items():
                if k.startswith("----:"):
                    self.tags[k] = [MP4FreeForm(base64.b64decode(v["data"]), dataformat=v["dataformat"],
                                                version=v.get("version", 0)) for v in values]
                else:
                    self.tags[k] = list(values)

    def others(self, touched: Sequence[str]) -> Any:
        skip = {k for name in touched for k in self._keys(name)}
        return {k: repr(v) for k, v in self.tags.items() if k not in skip}

    def save(self) -> None:
        self.file.save()


def detect(path: str) -> tuple[Any, str | None]:
    """``(mutagen file, kind)`` by the file's content; kind ``None`` when mutagen knows it
    but mttag does not write it. Raises :class:`WriteError` for what mutagen cannot read."""
    import mutagen
    from mutagen.aiff import AIFF
    from mutagen.flac import FLAC
    from mutagen.mp3 import MP3
    from mutagen.mp4 import MP4
    from mutagen.oggopus import OggOpus
    from mutagen.oggvorbis import OggVorbis
    from mutagen.wave import WAVE

    try:
        audio = mutagen.File(path, options=[MP3, FLAC, OggVorbis, OggOpus, MP4, WAVE, AIFF])
    except Exception as exc:  # noqa: BLE001 - mutagen raises many types on damaged files
        raise WriteError(f"damaged or unreadable tags ({reason(exc)})") from None
    if audio is None:
        raise WriteError("unsupported format (mttag writes mp3, flac, ogg, opus, m4a, wav and aiff)")
    for cls, kind in ((MP3, "mp3"), (WAVE, "wav"), (AIFF, "aiff"), (FLAC, "flac"), (OggOpus, "opus"),
                      (OggVorbis, "ogg"), (MP4, "m4a")):
        if isinstance(audio, cls):
            return audio, kind
    return audio, None


def open_tags(path: str) -> TagHandler:
    """The handler for a file, by its content (not its name)."""
    audio, kind = detect(path)
    try:
        if kind in ("mp3", "wav", "aiff"):
            return _ID3Handler(path, kind)
        if kind in ("flac", "opus", "ogg"):
            return _VorbisHandler(path, audio, kind)
        if kind == "m4a":
            return _MP4Handler(path, audio)
    except WriteError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise WriteError(f"damaged or unreadable tags ({reason(exc)})") from None
    raise WriteError("unsupported format (mttag writes mp3, flac, ogg, opus, m4a, wav and aiff)")


def captured_text(kind: str | None, name: str, captured: Any) -> list[str]:
    """The values a captured field held, as :meth:`TagHandler.get` reads them."""
    if kind in ("mp3", "wav", "aiff"):
        return [t for item in captured for t in item["text"]]
    if kind == "m4a":
        out = []
        for values in captured.values():
            for v in values:
                out.append(base64.b64decode(v["data"]).decode("utf-8", "replace") if isinstance(v, dict) else v)
        return out
    return [v for _, _, v in captured]
