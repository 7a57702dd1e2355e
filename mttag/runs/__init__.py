"""The run layer: what ``mttag tag``, ``embed``, ``write`` and ``similar`` do, as plain Python.

A command line command parses its options, makes one call here and renders what comes
back; :func:`mttag.tag` and :func:`mttag.embed` go through the same functions, and so can a
beets plugin or a Ray engine. No Typer, no rich: progress comes as :class:`RunEvents`
callbacks, the outcome as a :class:`RunSummary`, a refusal as a :class:`RunError` with a
one-line message and the exit code the command line would give. Importing this package
loads neither torch nor numpy; a run does.
"""

from .common import EXIT_INTERRUPTED, EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE, RunError, RunEvents, RunSummary
from .embed import EmbedRequest, embed_results, run_embed
from .similar import Similar, SimilarRequest, find_similar, write_similar_playlist
from .tag import TagRequest, run_tag, tag_results
from .write import WriteRequest, read_results, run_undo, run_write

__all__ = [
    "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_SOME_FAILED", "EXIT_USAGE", "RunError", "RunEvents", "RunSummary",
    "TagRequest", "run_tag", "tag_results", "EmbedRequest", "run_embed", "embed_results",
    "WriteRequest", "run_write", "run_undo", "read_results", "Similar", "SimilarRequest", "find_similar",
    "write_similar_playlist",
]
