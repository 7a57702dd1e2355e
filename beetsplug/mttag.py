"""mttag in beets: tag items with a music tagging model, find the tracks that sound alike.

``beet mttag [QUERY]`` stores the model's top tags and their scores as flexible attributes
(``mttag_tags``, ``mttag_model``, ``mttag_<tag>`` as numbers for range queries: the calibrated
confidence where the model has a calibration table, else the raw probability), fills
``genres``/``comments``/``mood`` when configured, and keeps each track's embedding in an
mttag index beside the library; ``beet mttag --similar QUERY`` lists (or writes as an .m3u8
playlist) the items most like the one QUERY matches. With ``auto: yes`` new items are
tagged during ``beet import``. See docs/librarians.md.

Everything that runs the model goes through ``mttag.beets_support``; this module only
speaks beets. It imports neither torch nor numpy: beets loads plugins on every command.
"""

from __future__ import annotations

import os
import re
import threading
import time
from typing import TYPE_CHECKING

from beets import ui
from beets.dbcore import types
from beets.plugins import BeetsPlugin

from mttag import beets_support as support

if TYPE_CHECKING:
    from beets.importer import ImportSession, ImportTask
    from beets.library import Item, Library

# beets 2.14 replaced the single `genre` string by the list field `genres`
_GENRE_LIST = None


def _genre_is_list() -> bool:
    global _GENRE_LIST
    if _GENRE_LIST is None:
        from beets.library import Item

        _GENRE_LIST = "genres" in Item._fields
    return _GENRE_LIST


def _split_genres(text: str) -> list[str]:
    """beets before 2.14 keeps several genres in one string, separated by ``;`` or ``/``."""
    return [g.strip() for g in re.split(r"[;/]", str(text or "")) if g.strip()]


class MttagPlugin(BeetsPlugin):
    def __init__(self, name: str | None = None) -> None:
        super().__init__(name)
        self.config.add({
            "auto": False,
            "model": "",  # empty: mttag's default model
            "device": "auto",
            "top": 5,
            "threshold": None,
            "min_confidence": None,  # genres/moods: null = mttag write's default (0.9) unless threshold is set
            "windows": 20,  # mttag's default; null: every window
            "genre": "no",  # no | add | replace
            "comments": "no",
            "mood": "no",  # a flexible attribute: beets has no mood field to write to files
            "write": None,  # null: as beets' import.write
            "force": False,
            "similarity": True,
            "index": "",  # empty: <library>.<model>.mttag beside the library database
        })
        self._runner: support.Runner | None = None
        # beets runs the import stages in threads: the model in the plugin's stage while the
        # file stage files the embeddings of the album before; each holds its lock briefly
        # or for its own work only, so the file stage never waits for the model
        self._model_lock = threading.Lock()
        self._lock = threading.Lock()  # _pending, _unwritten, the index
        self._pending: dict[int, support.Outcome] = {}  # item id → embedding waiting for its final path
        self._unwritten: set[int] = set()  # imported items whose genres/comments the files lack yet
        if self.config["auto"].get(bool):
            self.import_stages = [self.imported]
            self.register_listener("import_task_files", self.import_task_files)

    # -- configuration ------------------------------------------------------------------------
    def mode(self, key: str) -> str:
        """``no``, ``add`` or ``replace`` for genre, comments, mood (YAML reads ``no`` as False).
        Checked where used: beets turns an error while loading a plugin into a traceback and
        goes on without the plugin."""
        value = self.config[key].get()
        value = "no" if value is False or value is None else ("add" if value is True else str(value).lower())
        if value not in support.MODES:
            raise ui.UserError(f"mttag.{key}: {value!r} is not one of no, add, replace")
        return value

    @property
    def model(self) -> str | None:
        return self.config["model"].as_str() or None

    @property
    def model_name(self) -> str:
        return support.model_display_name(self.model)

    def index_path(self, lib: Library | None = None) -> str:
        configured = self.config["index"].get()
        if configured:
            return os.path.abspath(os.path.expanduser(str(configured)))
        import beets

        db = lib.path if lib is not None else beets.config["library"].as_filename()
        return os.fspath(support.default_index_path(db, self.model_name, beets.config.config_dir()))

    @property
    def item_types(self) -> dict[str, types.Type]:
        # read when beets opens the library (before any command), from files only
        try:
            index = self.index_path() if self.config["similarity"].get(bool) else None
        except Exception:
            index = None
        try:
            vocabulary = support.known_vocabulary(self.model, index)
        except Exception:  # beets reads this opening the library: a damaged file must not stop `beet ls`
            vocabulary = support.known_vocabulary(None, None)
        fields: dict[str, types.Type] = {support.field_name(t): types.Float(3) for t in vocabulary}
        fields.pop(support.TAGS_FIELD, None)
        fields.pop(support.MODEL_FIELD, None)
        return fields

    def runner(self) -> support.Runner:
        if self._runner is None:
            windows = self.config["windows"].get()
            self._runner = support.Runner(self.model, self.config["device"].as_str(),
                                          None if windows in (None, "all") else int(windows),
                                          embeddings=self.config["similarity"].get(bool))
        return self._runner

    # -- the command --------------------------------------------------------------------------
    def commands(self) -> list[ui.Subcommand]:
        cmd = ui.Subcommand("mttag", help="tag items with a music tagging model (mttag); find similar tracks")
        cmd.parser.add_option("-f", "--force", action="store_true", default=False,
                              help="tag again items already tagged by this model")
        cmd.parser.add_option("-w", "--write", action="store_true", default=None,
                              help="write genre/comments into the files (default: as import.write)")
        cmd.parser.add_option("-W", "--nowrite", action="store_false", dest="write",
                              help="do not write the files, only the database")
        cmd.parser.add_option("-m", "--model", default=None,
                              help="the model: an mttag model name, a model folder or a Hub id")
        cmd.parser.add_option("-s", "--similar", action="store_true", default=False,
                              help="list the items that sound most like the one QUERY matches")
        cmd.parser.add_option("-n", "--count", type="int", default=10,
                              help="with --similar: how many items (default 10)")
        cmd.parser.add_option("-p", "--playlist", default=None,
                              help="with --similar: also write them to this .m3u8 playlist")
        cmd.parser.add_option("--format", default=None,
                              help="with --similar: how to print items (as beet ls -f)")
        cmd.func = self.command
        return [cmd]

    def command(self, lib: Library, opts, args: list[str]) -> None:
        if opts.model:
            self.config["model"].set(opts.model)
            self._runner = None
        for key in ("genre", "comments", "mood"):
            self.mode(key)  # a bad setting stops the command before any item is tagged
        if opts.similar:
            self.similar(lib, args, opts.count, opts.playlist, opts.format)
            return
        if opts.playlist:
            raise ui.UserError("--playlist goes with --similar")
        write = self._write_setting(opts.write)
        force = opts.force or self.config["force"].get(bool)
        self.tag_items(lib, list(lib.items(args)), write=write, force=force)

    def _write_setting(self, option: bool | None) -> bool:
        """-w/-W, else mttag.write, else beets' import.write."""
        if option is not None:
            return option
        configured = self.config["write"].get()
        return ui.should_write() if configured is None else bool(configured)

    def _todo(self, lib: Library, items: list[Item], force: bool) -> tuple[list[Item], set[int], set[str] | None]:
        """The items to run: not tagged by this model yet (all with ``force``), and those
        whose file the index does not hold yet (new, or moved). Also the ids to tag and the
        index's files (None: no index is kept). Takes stale tracks out of the index first."""
        indexed: set[str] | None = None
        if self.config["similarity"].get(bool):
            index = self.index_path(lib)
            try:
                made_by = support.index_model(index)
                if made_by not in (None, self.model_name):
                    # else every run would embed the same items again, to be refused each time
                    self._log.warning("similarity index left alone: {} holds embeddings of {}, not of {}; "
                                      "set mttag.index to another folder for this model",
                                      support.describe(index), support.describe(made_by),
                                      support.describe(self.model_name))
                else:
                    indexed = support.indexed_paths(index)
                    indexed -= self._drop_stale(lib, index, indexed, items if force else [])
            except Exception as exc:  # a damaged index: tag anyway, say so once
                self._log.warning("similarity index left alone: {}", exc)
        name = self.model_name  # a registry look-up: once, not once per item
        tag_ids = {item.id for item in items if force or item.get(support.MODEL_FIELD) != name}
        todo = [item for item in items if item.id in tag_ids
                or (indexed is not None and support.path_key(os.fsdecode(item.path)) not in indexed)]
        return todo, tag_ids, indexed

    def _drop_stale(self, lib: Library, index: str, indexed: set[str], redo: list[Item]) -> set[str]:
        """Take out of the index the files no item has any more (removed from the library, or
        moved: the new path is embedded again) and those of ``redo`` (``--force``: embedded
        again, in case the audio changed). Returns the keys dropped."""
        live = {support.path_key(os.fsdecode(item.path)) for item in lib.items()}
        stale = (indexed - live) | (indexed & {support.path_key(os.fsdecode(item.path)) for item in redo})
        if stale:
            n = support.drop_rows(index, lambda key: key not in stale)
            self._log.info("similarity index: {} track(s) taken out (removed, moved or tagged again)", n)
        return stale

    def tag_items(self, lib: Library, items: list[Item], write: bool, force: bool) -> None:
        todo, tag_ids, indexed = self._todo(lib, items, force)
        skipped = len(items) - len(todo)
        if skipped:
            self._log.info("{} item(s) already tagged by {} (--force tags them again)", skipped, self.model_name)
        if not todo:
            return
        runner = self.runner()
        try:
            runner.load()
        except Exception as exc:
            raise ui.UserError(f"mttag: model {support.describe(self.model_name)}: {exc}") from None
        appender = None
        if indexed is not None and runner.embeddings:
            try:
                appender = support.IndexAppender(self.index_path(lib), runner).__enter__()
            except Exception as exc:
                self._log.warning("similarity index left alone: {}", exc)
        done = failed = 0
        start = time.perf_counter()
        paths = [os.fsdecode(item.path) for item in todo]
        try:
            for n, (item, outcome) in enumerate(zip(todo, runner.run(paths, self._top(), self._threshold())), 1):
                if not outcome.ok:
                    failed += 1
                    self._log.warning("{}: {}", support.describe(item.path), outcome.error)
                    continue
                if item.id in tag_ids:
                    changed = self.apply(item, outcome)
                    item.store()  # each as it arrives: an interrupted run keeps what it did
                    if write and changed:
                        item.try_write()
                if appender is not None:
                    appender.add(os.fsdecode(item.path), outcome)
                done += 1
                self._log.info("[{}/{}] {}: {}", n, len(todo), support.describe(item.path),
                               item.get(support.TAGS_FIELD, "") if item.id in tag_ids else "embedded")
        finally:
            if appender is not None:
                appender.__exit__(None, None, None)
        seconds = time.perf_counter() - start
        self._log.info("{} done, {} failed in {:.1f} s ({:.2f} s a track) with {} (model loaded in {:.1f} s)",
                       done, failed, seconds, seconds / max(1, done + failed), self.model_name, runner.load_seconds)

    def _top(self) -> int | None:
        top = self.config["top"].get()
        return None if top in (None, 0, "all") else int(top)

    def _threshold(self) -> float | None:
        threshold = self.config["threshold"].get()
        return None if threshold is None else float(threshold)

    def _min_confidence(self) -> float | None:
        value = self.config["min_confidence"].get()
        return None if value is None else float(value)

    def _field_values(self, outcome: support.Outcome, kind: str) -> list[str]:
        """The genres (moods) ``mttag write`` would write from these tags: confident ones, capped."""
        return support.genre_values(outcome.scores or outcome.tags, kind, self._threshold(), self._min_confidence())

    def apply(self, item: Item, outcome: support.Outcome) -> bool:
        """Store a result on ``item`` (not yet in the database). True when a field that beets
        writes into files (genres, comments) changed."""
        for key in list(item._values_flex):
            # scores of tags no longer chosen would be stale: beets cannot tell them apart
            if key.startswith(support.FIELD_PREFIX) and key not in support.OWN_FIELDS:
                del item[key]
        item[support.TAGS_FIELD] = ", ".join(support.display_tag(t) for t, _ in outcome.tags)
        item[support.MODEL_FIELD] = self.model_name
        for tag, score in outcome.tags:
            item[support.field_name(tag)] = round(float(score), 4)
        changed = False
        mode = self.mode("genre")
        genres = self._field_values(outcome, "genre")
        if mode != "no" and genres:
            if _genre_is_list():
                new = support.merge_list(list(item.get("genres") or []), genres, mode)
                changed |= new != list(item.get("genres") or [])
                item["genres"] = new
            else:
                before = _split_genres(item.get("genre") or "")
                new_text = "; ".join(support.merge_list(before, genres, mode))
                changed |= new_text != (item.get("genre") or "")
                item["genre"] = new_text
        mode = self.mode("comments")
        if mode != "no" and outcome.tags:
            text = support.merge_text(item.get("comments") or "", item[support.TAGS_FIELD], mode)
            changed |= text != (item.get("comments") or "")
            item["comments"] = text
        mode = self.mode("mood")
        moods = self._field_values(outcome, "mood")
        if mode != "no" and moods:
            before = [m.strip() for m in str(item.get("mood", "") or "").split(",") if m.strip()]
            item["mood"] = ", ".join(support.merge_list(before, moods, mode))
        return changed

    # -- import ------------------------------------------------------------------------------
    def imported(self, session: ImportSession, task: ImportTask) -> None:
        """Tag a task's new items (one batch per album). Files are not written here: they
        are still where the import found them; beets writes them in its next stage when
        ``import.write`` applies, and :meth:`import_task_files` files the embeddings."""
        try:
            self._tag_imported(list(task.imported_items()))
        except Exception as exc:  # noqa: BLE001 - an import stage that raises stops the whole
            # import half-way (items in the library, files not yet copied): log and go on untagged
            self._log.error("{}; items imported untagged (tag them later with: beet mttag)", exc)

    def _tag_imported(self, items: list) -> None:
        force = self.config["force"].get(bool)
        name = self.model_name
        items = [i for i in items if force or i.get(support.MODEL_FIELD) != name]
        if not items:
            return
        with self._model_lock:
            runner = self.runner()
            try:
                runner.load()
            except Exception as exc:
                self._log.error("model {}: {}; items imported untagged", support.describe(name), exc)
                return
            paths = [os.fsdecode(item.path) for item in items]
            for item, outcome in zip(items, runner.run(paths, self._top(), self._threshold())):
                if not outcome.ok:
                    self._log.warning("{}: {}", support.describe(item.path), outcome.error)
                    continue
                changed = self.apply(item, outcome)
                item.store()
                with self._lock:
                    if changed:
                        self._unwritten.add(item.id)
                    if outcome.vector is not None:
                        self._pending[item.id] = outcome
                self._log.info("{}: {}", support.describe(item.path), item.get(support.TAGS_FIELD, ""))

    def import_task_files(self, session: ImportSession, task: ImportTask) -> None:
        """The files are in their final place now (copied or moved into the library when the
        import does so): write what changed in them, and file their embeddings."""
        with self._lock:
            write = self._write_setting(None)
            for item in task.imported_items():
                if item.id in self._unwritten:
                    self._unwritten.discard(item.id)
                    # beets itself writes only when it applied new metadata (not as-is imports)
                    if write and not getattr(task, "apply", False):
                        item.try_write()
            ready = [(item, self._pending.pop(item.id)) for item in task.imported_items() if item.id in self._pending]
            if not ready or not self.config["similarity"].get(bool):
                return
            try:
                with support.IndexAppender(self.index_path(session.lib), self.runner()) as appender:
                    for item, outcome in ready:
                        appender.add(os.fsdecode(item.path), outcome)
            except Exception as exc:
                self._log.warning("similarity index left alone: {}", exc)

    # -- similar tracks ------------------------------------------------------------------------
    def similar(self, lib: Library, args: list[str], count: int, playlist: str | None,
                fmt: str | None = None) -> None:
        matches = list(lib.items(args))
        if not matches:
            raise ui.UserError("mttag --similar: no item matches the query")
        if len(matches) > 1:
            self._log.info("{} items match; the first is the query: {}", len(matches),
                           support.describe(matches[0].path))
        seed = matches[0]
        if not self.config["similarity"].get(bool):
            raise ui.UserError("mttag --similar: similarity is off (mttag.similarity: no)")
        index = self.index_path(lib)
        seed_key = support.path_key(os.fsdecode(seed.path))
        try:
            indexed = support.indexed_paths(index)
        except Exception as exc:
            raise ui.UserError(f"mttag --similar: {exc}") from None
        if seed_key not in indexed:  # embed it now (and tag it, if it is not yet)
            self.tag_items(lib, [seed], write=self._write_setting(None), force=False)
        by_key = {support.path_key(os.fsdecode(item.path)): item for item in lib.items()}
        try:
            hits = support.similar(index, seed_key, by_key, count)
        except KeyError:
            raise ui.UserError(f"mttag --similar: {support.describe(seed.path)} could not be embedded") from None
        except Exception as exc:
            raise ui.UserError(f"mttag --similar: {exc}") from None
        missing = len(by_key) - len(set(by_key) & support.indexed_paths(index))
        if missing:
            self._log.info("{} item(s) are not in the index yet (beet mttag embeds them)", missing)
        ui.print_(f"{'query':>6} {format(seed, fmt or '')}")
        for hit in hits:
            ui.print_(f"{hit.score:6.3f} {format(by_key[hit.path], fmt or '')}")
        if playlist:
            entries = [(os.fsdecode(seed.path), float(seed.length or 0))]
            entries += [(support.file_of(h.path), h.duration) for h in hits]
            try:
                for warning in support.write_playlist(playlist, entries):
                    self._log.warning("{}", warning)
            except Exception as exc:
                raise ui.UserError(str(exc)) from None
            self._log.info("playlist: {} ({} tracks)", support.describe(playlist), len(entries))
