"""Where the audio is in each container, and its digests: the byte ranges of MP3 frames, FLAC
STREAMINFO and frames, WAV/AIFF format and sample chunks, MP4 ``mdat`` (with the sample tables
that point into it), and Ogg packets page by page.

:class:`AudioPayload` parses a file once and hashes its audio at most once; the fingerprint
(:mod:`.fingerprint`) and the check that a write left the audio alone (:mod:`.verify`) share
that one hash. MP4 atoms and Ogg pages are read with mutagen's parsers. The other walkers stay
hand-written because a byte-range digest needs offsets mutagen does not give: it keeps FLAC's
audio offset and its RIFF/IFF chunk readers private, its MPEG frame search is laxer than the
rule that refuses a program named .mp3, and it reads only the first of stacked ID3v2 tags.
"""

from __future__ import annotations

import hashlib
import os
import struct
from functools import cached_property


def read_at(f, offset: int, n: int) -> bytes:
    f.seek(offset)
    return f.read(n)


def _range_digest(path: str, start: int, end: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        f.seek(start)
        left = end - start
        while left > 0:
            chunk = f.read(min(left, 1 << 20))
            if not chunk:
                break
            h.update(chunk)
            left -= len(chunk)
    return h.hexdigest()


def _id3v2_size(f, at: int = 0) -> int:
    """Bytes of the ID3v2 tag at ``at`` (0: none there)."""
    head = read_at(f, at, 10)
    if len(head) == 10 and head[:3] == b"ID3":
        size = 0
        for b in head[6:10]:
            size = (size << 7) | (b & 0x7F)
        return 10 + size + (10 if head[5] & 0x10 else 0)
    return 0


def _id3v2_end(f) -> int:
    """Where the ID3v2 tags at the start of a file end: some writers stack a second tag
    after the first, and players skip them all."""
    end = 0
    while (tag := _id3v2_size(f, end)) > 0:
        end += tag
    return end


def _flac_ranges(f, size: int) -> list[tuple[int, int]]:
    pos = _id3v2_size(f)
    if read_at(f, pos, 4) != b"fLaC":
        raise ValueError("no FLAC header")
    pos += 4
    streaminfo = None
    while True:
        head = read_at(f, pos, 4)
        if len(head) < 4:
            raise ValueError("truncated metadata")
        length = int.from_bytes(head[1:4], "big")
        if head[0] & 0x7F == 0:
            streaminfo = (pos + 4, pos + 4 + length)
        pos += 4 + length
        if head[0] & 0x80:
            break
    if streaminfo is None:
        raise ValueError("no STREAMINFO")
    return [streaminfo, (pos, size)]


def _chunk_ranges(f, size: int, big_endian: bool, wanted: tuple[bytes, ...]) -> list[tuple[int, int]]:
    fmt = ">I" if big_endian else "<I"
    pos = 12
    found: dict[bytes, tuple[int, int]] = {}
    while pos + 8 <= size:
        head = read_at(f, pos, 8)
        cid, length = head[:4], struct.unpack(fmt, head[4:8])[0]
        if cid in wanted and cid not in found:
            found[cid] = (pos + 8, min(pos + 8 + length, size))
        pos += 8 + length + (length & 1)
    if set(found) != set(wanted):
        raise ValueError("audio chunks not found")
    return [found[c] for c in wanted]

# MPEG audio frame headers: bit rates (kbit/s) by (MPEG-1 or 2/2.5, layer) and sample rates by version bits
_MPEG_KBPS = {
    (1, 1): (0, 32, 64, 96, 128, 160, 192, 224, 256, 288, 320, 352, 384, 416, 448),
    (1, 2): (0, 32, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384),
    (1, 3): (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320),
    (2, 1): (0, 32, 48, 56, 64, 80, 96, 112, 128, 144, 160, 176, 192, 224, 256),
    (2, 2): (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
}
_MPEG_RATES = {3: (44100, 48000, 32000), 2: (22050, 24000, 16000), 0: (11025, 12000, 8000)}
_MPEG_ZEROS = 256 << 10  # zero bytes skipped after the ID3v2 tag (padding some writers leave)
# where, after them, the first frame must start: a wider search finds chained frame-like
# words deep inside programs named .mp3 (tests: test_dry_run_does_not_promise_to_write_...)
_MPEG_SLACK = 4096


def _mpeg_frame(head: bytes) -> tuple[int, tuple[int, int, int]] | None:
    """``(frame length, (version, layer, sample-rate index))`` of an MPEG audio frame header."""
    if len(head) < 4 or head[0] != 0xFF or head[1] & 0xE0 != 0xE0:
        return None
    ver, layer, br, sr, pad = (head[1] >> 3) & 3, 4 - ((head[1] >> 1) & 3), head[2] >> 4, (head[2] >> 2) & 3, (head[2] >> 1) & 1
    if ver == 1 or layer == 4 or br in (0, 15) or sr == 3:
        return None
    v1 = ver == 3
    kbps = _MPEG_KBPS[(1, layer) if v1 else (2, 1 if layer == 1 else 2)][br]
    rate = _MPEG_RATES[ver][sr]
    if layer == 1:
        size = (12 * kbps * 1000 // rate + pad) * 4
    else:
        size = (72 if layer == 3 and not v1 else 144) * kbps * 1000 // rate + pad
    return size, (ver, layer, sr)


def _mpeg_audio_start(f, start: int, size: int) -> int:
    """Where the MPEG audio frames start: past zero padding, within :data:`_MPEG_SLACK`,
    a frame header followed by five more of the same stream (or by the end of the file).
    Raises ``ValueError`` for a file that is not MPEG audio (say a program named .mp3,
    whose tables can hold a few header-like words far into the file)."""
    zeros = read_at(f, start, _MPEG_ZEROS)
    start += len(zeros) - len(zeros.lstrip(b"\0"))
    window = read_at(f, start, _MPEG_SLACK + 4)
    i = window.find(b"\xff")
    while 0 <= i < len(window) - 3:
        first = _mpeg_frame(window[i:i + 4])
        if first is not None:
            pos, ok = start + i, True
            for _ in range(6):
                frame = _mpeg_frame(read_at(f, pos, 4))
                if frame is None or frame[1] != first[1]:
                    ok = pos >= size - 4 and pos > start + i  # a short file ends after its last frame
                    break
                pos += frame[0]
                if pos >= size:
                    break
            if ok:
                return start + i
        i = window.find(b"\xff", i + 1)
    raise ValueError("no MPEG audio frames at its start")


def _mp3_ranges(f, size: int) -> list[tuple[int, int]]:
    """The MPEG frames of an mp3: after the ID3v2 tag (and any junk before the first frame),
    before an ID3v1 tag and an APEv2 tag at the end."""
    start = _mpeg_audio_start(f, _id3v2_end(f), size)
    end = size
    if end - start >= 128 and read_at(f, end - 128, 3) == b"TAG":
        end -= 128
    footer = read_at(f, end - 32, 32) if end - start >= 32 else b""
    if footer[:8] == b"APETAGEX":
        tag_size, flags = struct.unpack("<II", footer[12:20])
        end -= tag_size + (32 if flags & 0x80000000 else 0)
    if end <= start:
        raise ValueError("no MPEG audio frames")
    return [(start, end)]



def _mp4_layout(f, size: int) -> tuple[list[tuple[int, int]], str | None]:
    """The ``mdat`` ranges, and the digest of the sample tables with every chunk offset given as
    (which ``mdat``, where in it): a tag edit may move the ``mdat`` but nothing else. ``None``
    for the digest when an offset points outside every ``mdat`` (only decoding can judge)."""
    from mutagen.mp4 import AtomError, Atoms

    try:
        atoms = Atoms(f).atoms
    except AtomError as exc:
        raise ValueError(str(exc)) from None
    if any(atom.name == b"moof" for atom in atoms):
        raise ValueError("fragmented MP4")
    mdats = [(a.offset + a.length - a.datalength, min(a.offset + a.length, size)) for a in atoms if a.name == b"mdat"]
    moov = next((a for a in atoms if a.name == b"moov"), None)
    if moov is None or not mdats:
        raise ValueError("no moov/mdat")
    h = hashlib.sha256()
    for trak in moov.findall(b"trak"):
        try:
            stbl = trak[b"mdia", b"minf", b"stbl"]
        except KeyError:
            continue
        h.update(b"trak")
        for child in sorted(stbl.children, key=lambda c: c.name):
            data = child.read(f)[1]
            if child.name not in (b"stco", b"co64"):
                h.update(child.name + struct.pack(">Q", len(data)) + data)
                continue
            n = struct.unpack(">I", data[4:8])[0]
            width = 4 if child.name == b"stco" else 8
            offsets = struct.unpack(f">{n}{'I' if width == 4 else 'Q'}", data[8:8 + n * width])
            h.update(struct.pack(">Q", n))
            for a in offsets:
                i = next((i for i, (x, y) in enumerate(mdats) if x <= a < y), None)
                if i is None:
                    return mdats, None
                h.update(struct.pack(">IQ", i, a - mdats[i][0]))
    return mdats, h.hexdigest()


# header packets before the audio: Vorbis identification, comments, setup; Opus head, tags
OGG_HEADERS = {"ogg": 3, "opus": 2}


def ogg_header_pages(f, headers: int) -> list:
    """The pages holding the first ``headers`` packets; ``f`` is left just after them."""
    from mutagen.ogg import OggPage

    f.seek(0)
    pages, done = [], 0
    while done < headers:
        page = OggPage(f)
        pages.append(page)
        done += len(page.packets) - (0 if page.complete else 1)
    return pages


def _ogg_digests(f, headers: int) -> tuple[str, str | None]:
    """One pass over an Ogg stream: the SHA-256 of its identification header and, page by
    page, its packets and granule positions (comments and page numbering excluded), and that
    of its other non-comment headers and page flags (``None``: the headers are cut short)."""
    from mutagen.ogg import OggPage

    packets = OggPage.to_packets(ogg_header_pages(f, headers))
    h, rest = hashlib.sha256(packets[0]), hashlib.sha256()
    for packet in packets[2:headers]:
        rest.update(struct.pack("<I", len(packet)) + packet)
    while True:
        try:
            page = OggPage(f)
        except EOFError:
            break
        h.update(struct.pack("<qI", page.position, page.serial))
        for packet in page.packets:
            h.update(struct.pack("<I", len(packet)))
            h.update(packet)
        rest.update(bytes([page.continued, page.complete, page.first, page.last]))
    return h.hexdigest(), rest.hexdigest() if len(packets) >= headers else None


def _ranges(kind: str, f, size: int) -> tuple[list[tuple[int, int]], list[tuple[int, int]], str | None]:
    """``(audio ranges, ranges around them that a tag edit leaves alone, layout digest)``."""
    if kind == "mp3":
        audio = _mp3_ranges(f, size)
        return audio, [(_id3v2_size(f), audio[0][0]), (audio[-1][1], size)], ""
    if kind == "flac":
        return _flac_ranges(f, size), [], ""
    if kind in ("wav", "aiff"):
        wanted = (b"fmt ", b"data") if kind == "wav" else (b"COMM", b"SSND")
        return _chunk_ranges(f, size, kind == "aiff", wanted), [], ""
    if kind == "m4a":
        mdats, layout = _mp4_layout(f, size)
        return mdats, [], layout
    raise ValueError(f"no audio ranges for {kind}")


def audio_ranges(kind: str, path: str) -> list[tuple[int, int]]:
    """The byte ranges holding a file's audio (not its tags), by container: MP3 frames,
    FLAC STREAMINFO and frames, WAV/AIFF format and sample chunks, MP4 ``mdat``. Raises
    ``ValueError`` when the file is not that container (or is damaged)."""
    with open(path, "rb") as f:
        return _ranges(kind, f, os.path.getsize(path))[0]


class AudioPayload:
    """The audio of one file of a container ``kind`` (``ValueError`` when the file is not one).

    ``digest``: the SHA-256 of the audio alone, what a fingerprint holds (MP3 frames, FLAC
    STREAMINFO and frames, WAV/AIFF format and sample chunks, MP4 ``mdat``; Ogg packets and
    granule positions), computed on first use and kept. ``same_as(other)``: whether another
    file holds this very audio, as a tag edit must leave it: the digest, and what else a tag
    edit must not touch (MP3: the bytes around the frames but the first ID3v2 tag; MP4: the
    sample tables, chunk offsets moved exactly with the ``mdat``; Ogg: the setup header and
    the page flags)."""

    def __init__(self, kind: str, path: str | os.PathLike):
        self.kind, self.path = kind, os.fspath(path)
        with open(self.path, "rb") as f:
            if kind in OGG_HEADERS:  # parsing the pages is reading them all: hash on the way
                self.ranges, self._around = [], []
                self.digest, self._layout = _ogg_digests(f, OGG_HEADERS[kind])
            else:
                self.ranges, self._around, self._layout = _ranges(kind, f, os.path.getsize(self.path))

    @cached_property
    def digest(self) -> str:
        return _ranges_digest(self.path, self.ranges)

    @cached_property
    def layout(self) -> str | None:
        if self._layout is None or not self._around:
            return self._layout
        return _ranges_digest(self.path, self._around)

    def same_as(self, other: AudioPayload) -> bool:
        return (self.kind == other.kind and self.layout is not None and self.layout == other.layout
                and self.digest == other.digest)


def _ranges_digest(path: str, ranges: list[tuple[int, int]]) -> str:
    """SHA-256 over the SHA-256 of each range (the fingerprint's form; a range's length is in its hash)."""
    h = hashlib.sha256()
    for a, b in ranges:
        h.update(bytes.fromhex(_range_digest(path, a, b)))
    return h.hexdigest()
