"""Engines that run tagging and embedding beyond one machine (``--engine ray``).

Nothing here is imported by ``import mttag`` or ``mttag --help``: Ray and pyarrow load
only when a command asks for this engine.
"""
