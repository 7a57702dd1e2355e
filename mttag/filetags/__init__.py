"""Tags inside the user's audio files: reading what is there (reader) and writing mttag's tags
atomically, verified, with a signed undo log (writer, the public face of the write).

The modules, each using only those listed before it: ``fields`` (the one map of where each
format keeps genre, mood, comment ..., for reading and writing), ``reader``; ``outcome`` (what
a write reports, ``WriteError``), ``plan`` (which tags go into which field), ``formats`` (the
tags of one file through mutagen), ``containers`` (where the audio is; its hash, made once),
``verify`` (the audio is unchanged) and ``fingerprint``, ``delta`` (bytes for an exact undo),
``undolog`` (the signed journal), ``atomic`` (per-file lock, copy, atomic replace), ``restore``
(undo), and ``writer`` (the write itself, and the names ``mttag.filetags.writer`` has always
offered, imported from the others)."""
