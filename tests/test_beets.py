"""The beets plugin (beetsplug/mttag.py) with real beets: a temporary library, audio made here,
the bundled model (offline)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import soundfile as sf

pytest.importorskip("beets")
mutagen_flac = pytest.importorskip("mutagen.flac")

from beets.dbcore.query import NumericQuery  # noqa: E402
from beets.library import Item  # noqa: E402
from beets.test.helper import ImportHelper, PluginMixin, PluginTestHelper  # noqa: E402

from mttag import beets_support as support  # noqa: E402

SR = 22050
SECONDS = 6.0


def _sound(kind: str) -> np.ndarray:
    t = np.arange(int(SR * SECONDS)) / SR
    rng = np.random.default_rng(0)
    if kind == "tone":
        return 0.5 * np.sin(2 * np.pi * 440 * t)
    if kind == "chord":
        return sum(np.sin(2 * np.pi * f * t) for f in (261.6, 329.6, 392.0)) / 6
    if kind == "noise":
        return 0.3 * rng.standard_normal(len(t))
    if kind == "clicks":
        return np.where(np.arange(len(t)) % (SR // 2) < 200, 0.8, 0.0) * rng.standard_normal(len(t))
    raise ValueError(kind)


KINDS = ("tone", "chord", "noise", "clicks")


@pytest.fixture(scope="module")
def sounds(tmp_path_factory) -> dict[str, Path]:
    """FLAC files with the tags beets' as-is import reads (title, artist, album, track)."""
    folder = tmp_path_factory.mktemp("sounds")
    out = {}
    for n, kind in enumerate(KINDS, 1):
        path = folder / f"{n:02d} {kind}.flac"
        sf.write(path, _sound(kind).astype(np.float32), SR)
        f = mutagen_flac.FLAC(path)
        f.update({"title": kind, "artist": "Synth", "album": "Tests", "tracknumber": str(n)})
        f.save()
        out[kind] = path
    return out


class _Base(PluginTestHelper):
    plugin: ClassVar[str] = "mttag"
    preload_plugin: ClassVar[bool] = False

    def start(self, **config):
        self.config["mttag"].set({"index": str(self.temp_path / "lib.mttag"), **config})
        self.load_plugins()

    def add(self, sounds, *kinds) -> list[Item]:
        items = []
        for kind in kinds or KINDS:
            path = self.lib_path / sounds[kind].name
            shutil.copy(sounds[kind], path)
            item = Item.from_path(path)
            item.add(self.lib)
            items.append(item)
        return items

    def plugin_instance(self):
        import beets.plugins

        return next(p for p in beets.plugins.find_plugins() if p.name == "mttag")


class TestCommand(_Base):
    def test_stores_fields_that_queries_use(self, sounds):
        self.start()
        self.add(sounds)
        self.run_command("mttag")
        items = list(self.lib.items())
        assert all(i["mttag_model"] == "musicnn" for i in items)
        item = self.lib.items("title:chord").get()
        tags = item["mttag_tags"].split(", ")
        assert len(tags) == 5 and all(t == t.lower() for t in tags)
        # every stored tag has its score as a number, best first: the default model has a
        # calibration table, so the score is the confidence (the most confident tags are chosen)
        scores = [item[support.field_name(t)] for t in tags]
        assert scores[0] >= 0.5
        assert all(isinstance(s, float) for s in scores) and scores == sorted(scores, reverse=True)
        first, score = tags[0], scores[0]
        field = support.field_name(first)
        assert item.id in [i.id for i in self.lib.items(f"mttag_tags:{first}")]
        # a range query on the score: a numeric comparison, not a substring match
        above = [i.id for i in self.lib.items(f"{field}:{score - 0.001:.4f}..")]
        below = [i.id for i in self.lib.items(f"{field}:..{score - 0.001:.4f}")]
        assert item.id in above and item.id not in below
        assert Item._types[field].query is NumericQuery

    def test_already_tagged_items_are_skipped_unless_force(self, sounds):
        self.start()
        (item,) = self.add(sounds, "tone")
        self.run_command("mttag")
        item.load()
        item["mttag_tags"] = "kept"
        item.store()
        self.run_command("mttag")
        assert self.lib.get_item(item.id)["mttag_tags"] == "kept"
        self.run_command("mttag", "--force")
        assert self.lib.get_item(item.id)["mttag_tags"] != "kept"

    def test_another_model_tags_again_and_old_scores_go(self, sounds):
        self.start()
        (item,) = self.add(sounds, "noise")
        self.run_command("mttag")
        before = set(self.lib.get_item(item.id).keys())
        self.run_command("mttag", "--model", "mtt-musicnn")
        after = self.lib.get_item(item.id)
        assert after["mttag_model"] == "mtt-musicnn"
        stored = {support.field_name(t) for t in after["mttag_tags"].split(", ")}
        scores = {k for k in after.keys() if k.startswith("mttag_") and k not in support.OWN_FIELDS}
        assert scores == stored  # the msd model's scores that mtt does not choose are gone
        assert before != set(after.keys())

    def test_bad_files_get_one_line_and_the_run_goes_on(self, sounds, caplog):
        self.start()
        (good,) = self.add(sounds, "chord")
        missing = Item(path=str(self.lib_path / "gone.flac"), title="gone")
        missing.add(self.lib)
        fake = self.lib_path / "not audio.flac"
        fake.write_text("hello")
        bogus = Item(path=str(fake), title="bogus")
        bogus.add(self.lib)
        with caplog.at_level(logging.INFO, logger="beets"):
            self.run_command("mttag")
        assert self.lib.get_item(good.id)["mttag_model"] == "musicnn"
        for bad, name in ((missing, "gone.flac"), (bogus, "not audio.flac")):
            assert "mttag_model" not in self.lib.get_item(bad.id)
            lines = [r.getMessage() for r in caplog.records if name in r.getMessage() and r.levelno >= logging.WARNING]
            assert len(lines) == 1 and "\n" not in lines[0]

    def test_interrupted_run_keeps_what_it_stored_and_continues(self, sounds, monkeypatch):
        self.start()
        items = self.add(sounds)
        real_run = support.Runner.run
        seen: list[list[str]] = []

        def interrupted(runner, paths, top, threshold):
            seen.append(list(paths))
            for n, outcome in enumerate(real_run(runner, paths, top, threshold)):
                if n == 2:
                    raise KeyboardInterrupt
                yield outcome

        monkeypatch.setattr(support.Runner, "run", interrupted)
        with pytest.raises(KeyboardInterrupt):
            self.run_command("mttag")
        tagged = [i.id for i in self.lib.items("mttag_model:musicnn")]
        assert tagged == [items[0].id, items[1].id]
        assert len(support.indexed_paths(self.temp_path / "lib.mttag")) == 2
        self.run_command("mttag")
        assert seen[1] == [os.fsdecode(i.path) for i in items[2:]]  # only what was left
        assert len(list(self.lib.items("mttag_model:musicnn"))) == len(items)


    def test_an_index_of_another_model_is_left_alone(self, sounds, caplog, monkeypatch):
        self.start()
        (item,) = self.add(sounds, "tone")
        self.run_command("mttag")
        index = self.temp_path / "lib.mttag"
        before = {p.name: p.read_bytes() for p in index.iterdir() if p.is_file()}
        with caplog.at_level(logging.INFO, logger="beets"):
            self.run_command("mttag", "--model", "mtt-musicnn")
        assert self.lib.get_item(item.id)["mttag_model"] == "mtt-musicnn"
        assert {p.name: p.read_bytes() for p in index.iterdir() if p.is_file()} == before
        warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        assert len(warnings) == 1 and "holds embeddings of musicnn, not of mtt-musicnn" in warnings[0]
        # nothing left to do: the model is not run again for an index that cannot take it
        monkeypatch.setattr(support.Runner, "run", lambda *a: pytest.fail("ran the model"))
        self.run_command("mttag", "--model", "mtt-musicnn")


class TestWrite(_Base):
    def test_genre_add_is_written_through_beets_and_audio_is_untouched(self, sounds):
        self.start(genre="add", comments="replace", write=True)
        (item,) = self.add(sounds, "noise")
        item["genres"] = ["Polka"]
        item.store()
        item.write()
        samples = sf.read(item.path)[0]
        self.run_command("mttag")
        item = self.lib.get_item(item.id)
        # the stored scores are confidences: mttag write's rule picks the same genres from them
        stored = [{"tag": t, "score": item[support.field_name(t)], "confidence": item[support.field_name(t)]}
                  for t in item["mttag_tags"].split(", ")]
        ours = support.genre_values(stored, "genre")
        assert ours and len(ours) <= 3 and item["genres"] == ["Polka", *ours]
        on_disk = mutagen_flac.FLAC(item.path)
        assert on_disk["genre"] == ["Polka", *ours]
        assert on_disk["comment"] == [item["mttag_tags"]]
        assert np.array_equal(sf.read(item.path)[0], samples)

    def test_genre_replace(self, sounds):
        self.start(genre="replace")
        (item,) = self.add(sounds, "noise")
        item["genres"] = ["Polka"]
        item.store()
        self.run_command("mttag", "--write")
        item = self.lib.get_item(item.id)
        assert "Polka" not in item["genres"] and item["genres"]
        assert "Polka" not in mutagen_flac.FLAC(item.path)["genre"]

    def test_nowrite_keeps_the_file_and_genre_off_keeps_genres(self, sounds):
        self.start(genre="add")
        (a, b) = self.add(sounds, "tone", "clicks")
        before = Path(os.fsdecode(a.path)).read_bytes()
        self.run_command("mttag", "-W")
        assert Path(os.fsdecode(a.path)).read_bytes() == before
        assert self.lib.get_item(a.id)["genres"]  # in the database only
        self.unload_plugins()
        self.start()  # genre: no (the default)
        self.run_command("mttag", "--force", "--write")
        assert "genre" not in mutagen_flac.FLAC(os.fsdecode(b.path))

    def test_genres_follow_the_confident_rule_of_mttag_write(self):
        from mttag.inference.tagging import TagScore

        self.start(genre="replace", mood="add")
        item = Item(path=str(self.lib_path / "x.flac"), title="x", genres=["Polka"])
        item.add(self.lib)
        scores = [TagScore(t, k, f"msd:{t}", p, c) for t, k, p, c in [
            ("jazz", "genre", 0.2, 0.97), ("blues", "genre", 0.1, 0.96), ("death metal", "genre", 0.05, 0.95),
            ("metal", "genre", 0.3, 0.93), ("happy", "mood", 0.4, 0.92), ("rock", "genre", 0.8, 0.4)]]
        outcome = support.Outcome("x.flac", [(s.tag, s.confidence) for s in scores], scores=scores)
        self.plugin_instance().apply(item, outcome)
        assert item["genres"] == ["Jazz", "Blues", "Death Metal"]  # at most 3; never rock (0.4)
        assert item["mood"] == "Happy"

    def test_bad_mode_is_refused_before_tagging(self, sounds):
        from beets.ui import UserError

        self.start(genre="sometimes")
        (item,) = self.add(sounds, "tone")
        with pytest.raises(UserError, match="mttag.genre: 'sometimes' is not one of no, add, replace"):
            self.run_command("mttag")
        assert "mttag_model" not in self.lib.get_item(item.id)


class TestSimilar(_Base):
    def test_lists_the_nearest_and_writes_a_playlist(self, sounds, capsys):
        self.start()
        items = {i.title: i for i in self.add(sounds)}
        self.run_command("mttag")
        capsys.readouterr()
        playlist = self.temp_path / "like.m3u8"
        self.run_command("mttag", "--similar", "-n", "3", "-p", str(playlist), "--format", "$title", "title:tone")
        lines = capsys.readouterr().out.splitlines()
        assert lines[0].split() == ["query", "tone"]
        listed = [line.split()[1] for line in lines[1:]]
        assert len(listed) == 3 and "tone" not in listed
        assert listed.index("chord") < listed.index("noise")  # a chord sounds more like a tone than noise
        entries = [line for line in playlist.read_text(encoding="utf-8").splitlines() if not line.startswith("#")]
        assert [Path(e).stem.split(" ", 1)[1] for e in entries] == ["tone", *listed]

        # a removed item drops out of the answers (it stays in the index file)
        self.lib.get_item(items["chord"].id).remove()
        self.run_command("mttag", "--similar", "--format", "$title", "title:tone")
        listed = [line.split()[1] for line in capsys.readouterr().out.splitlines()[1:]]
        assert "chord" not in listed and len(listed) == 2

    def test_a_moved_item_is_embedded_again(self, sounds):
        self.start()
        (item, _) = self.add(sounds, "tone", "noise")
        self.run_command("mttag")
        moved = self.lib_path / "moved.flac"
        shutil.move(os.fsdecode(item.path), moved)
        item.path = str(moved)
        item.store()
        old = support.path_key(os.fsdecode(self.lib_path / sounds["tone"].name))
        assert old in support.indexed_paths(self.temp_path / "lib.mttag")
        self.run_command("mttag")
        indexed = support.indexed_paths(self.temp_path / "lib.mttag")
        assert support.path_key(str(moved)) in indexed and old not in indexed and len(indexed) == 2

    def test_force_embeds_changed_audio_again(self, sounds):
        from mttag.inference.index import EmbeddingIndex

        self.start()
        (tone, noise) = self.add(sounds, "tone", "noise")
        self.run_command("mttag")
        index = self.temp_path / "lib.mttag"

        def cosine() -> float:
            idx = EmbeddingIndex(index)
            rows = [idx.row_of(os.fsdecode(i.path)) for i in (tone, noise)]
            return float(np.dot(idx.vectors[rows[0]], idx.vectors[rows[1]]))

        assert cosine() < 0.99
        shutil.copy(os.fsdecode(noise.path), os.fsdecode(tone.path))  # new audio, same path
        self.run_command("mttag", "--force", "title:tone")
        assert cosine() > 0.999 and len(EmbeddingIndex(index)) == 2

    def test_an_interrupted_swap_is_recovered(self, sounds):
        self.start()
        self.add(sounds, "tone", "noise")
        self.run_command("mttag")
        index = self.temp_path / "lib.mttag"
        keys = support.indexed_paths(index)
        dead = 2**22 + 12345  # above Linux's default pid_max: no such process
        os.rename(index, index.with_name(f".lib.mttag.old-{dead}"))  # killed between the renames
        (index.with_name(f".lib.mttag.new-{dead}")).mkdir()
        assert support.indexed_paths(index) == keys
        assert sorted(p.name for p in index.parent.iterdir() if p.name.startswith(".lib.mttag")) == []


class TestImport(PluginMixin, ImportHelper):
    plugin: ClassVar[str] = "mttag"
    preload_plugin: ClassVar[bool] = False

    def test_auto_tags_on_import_and_indexes_the_final_paths(self, sounds):
        index = self.temp_path / "lib.mttag"
        self.config["mttag"].set({"auto": True, "index": str(index), "genre": "add"})
        self.load_plugins()
        source = self.import_path / "album"
        source.mkdir()
        for kind in ("tone", "noise"):
            shutil.copy(sounds[kind], source)
        self.setup_importer(autotag=False, write=True).run()
        items = list(self.lib.items())
        assert len(items) == 2 and all(i["mttag_model"] == "musicnn" for i in items)
        # copied into the library, and the index names those copies, not the originals
        paths = {support.path_key(os.fsdecode(i.path)) for i in items}
        assert all(str(self.lib_path) in p for p in paths)
        assert support.indexed_paths(index) == paths
        # an as-is import: beets writes no tags itself, the plugin writes the genres it added
        for i in items:
            assert mutagen_flac.FLAC(os.fsdecode(i.path))["genre"] == list(i["genres"])
        for kind in ("tone", "noise"):
            assert "genre" not in mutagen_flac.FLAC(source / sounds[kind].name)

    def test_a_failing_stage_logs_and_the_import_completes(self, sounds):
        """An import stage that raises stops beets' import half-way: a bad setting (or a model
        that fails) is one log line, and the items are imported untagged."""
        self.config["mttag"].set({"auto": True, "genre": "add", "mood": "maybe"})
        self.load_plugins()
        source = self.import_path / "album"
        source.mkdir()
        shutil.copy(sounds["tone"], source)
        self.setup_importer(autotag=False, write=True).run()
        items = list(self.lib.items())
        assert len(items) == 1 and "mttag_model" not in items[0]
        assert str(self.lib_path) in os.fsdecode(items[0].path)  # copied: the import went on

    def test_auto_off_registers_no_stage(self):
        self.config["mttag"].set({"auto": False})
        self.load_plugins()
        import beets.plugins

        assert beets.plugins.import_stages() == []


def test_field_names():
    assert support.field_name("Hip-Hop") == "mttag_hip_hop"
    assert support.field_name("female  vocalists") == "mttag_female_vocalists"
    assert support.field_name("00s") == "mttag_00s"
    assert support.field_name("R&B / soul") == "mttag_r_b_soul"


def test_default_index_is_beside_the_library_one_per_model(tmp_path):
    assert support.default_index_path(b"/m/library.db", "msd-musicnn", tmp_path) == Path("/m/library.msd-musicnn.mttag")
    assert support.default_index_path("/m/lib.blb", "owner/name@v1", tmp_path) == Path("/m/lib.owner_name_v1.mttag")
    assert support.default_index_path(":memory:", "x", tmp_path) == tmp_path / "library.x.mttag"


def test_score_fields_of_a_model_folder_are_numbers(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"tags": ["Tuvan Throat Singing"]}), encoding="utf-8")
    assert "Tuvan Throat Singing" in support.known_vocabulary(str(tmp_path))
    assert "Tuvan Throat Singing" not in support.known_vocabulary(None)
    assert "Hip-Hop" in support.known_vocabulary(None)


def test_the_combined_models_display_tags_are_typed_as_numbers():
    vocabulary = support.known_vocabulary(None)
    for tag in ("violin", "female vocals", "classical", "rock"):  # musicnn's msd:/mtt: outputs, merged
        assert tag in vocabulary


def test_stored_score_is_the_confidence_where_the_model_has_a_table():
    from types import SimpleNamespace

    from mttag.inference.tagging import TagResult, TagScore

    def fake_tagger(confident: bool):
        def tag_files(paths, top=None, threshold=None):
            for p in paths:
                scores = [TagScore("violin", "instrument", "mtt:violin", 0.3, 0.98 if confident else None),
                          TagScore("rock", "genre", "msd:rock", 0.6, 0.5 if confident else None)]
                if not confident:
                    scores.reverse()
                yield TagResult(p, 1.0, [(s.tag, s.probability) for s in scores], scores=scores,
                                probabilities=np.array([0.3, 0.6]))
        return SimpleNamespace(config=SimpleNamespace(tags=["mtt:violin", "msd:rock"]), calibration=None,
                               tag_files=tag_files)

    runner = support.Runner("musicnn", embeddings=False)
    runner._tagger = fake_tagger(True)
    (out,) = runner.run(["a.flac"], 5, None)
    assert out.tags == [("violin", 0.98), ("rock", 0.5)]
    runner._tagger = fake_tagger(False)
    (out,) = runner.run(["a.flac"], 5, None)
    assert out.tags == [("rock", 0.6), ("violin", 0.3)]


def test_merging():
    assert support.merge_list(["Jazz", "rock"], ["Rock", "Pop"], "add") == ["Jazz", "rock", "Pop"]
    assert support.merge_list(["Jazz"], ["Rock"], "replace") == ["Rock"]
    assert support.merge_text("my note", "rock, pop", "add") == "my note; rock, pop"
    assert support.merge_text("my note; rock, pop", "rock, pop", "add") == "my note; rock, pop"


def test_plugin_module_does_not_import_torch(tmp_path):
    code = ("import sys, beetsplug.mttag; "
            "print(json.dumps(['torch' in sys.modules, 'numpy' in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", "import json; " + code], capture_output=True, text=True,
                         env={**os.environ, "BEETSDIR": str(tmp_path), "HOME": str(tmp_path)}, check=True)
    assert json.loads(out.stdout) == [False, False]


def test_a_damaged_index_does_not_stop_beets_from_opening_the_library(tmp_path):
    (tmp_path / "index.json").write_text("[" * 100_000 + "]" * 100_000)
    tags = support.known_vocabulary(None, tmp_path)
    assert "rock" in tags
