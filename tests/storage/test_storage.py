"""Stores: choosing one, scanning SOURCE, writing DEST (selection, order, links, atomic writes), and output names."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from batch.common.errors import ConfigError, EnvironmentProblem
from batch.storage import ListingCounts, open_job_stores, open_store
from batch.storage.local import LocalStore
from batch.storage.names import is_selected, output_base, safe_relative
from tests.conftest import ENGLISH, speak


def touch(root: Path, *names: str) -> None:
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x" * 10)


def keys(source: LocalStore, **kwargs: tuple[str, ...]) -> list[str]:
    return [item.key for item in source.list(**kwargs)]


# --- choosing a store ---------------------------------------------------------------------------------------


def test_open_store_picks_a_folder_or_s3_from_the_location(tmp_path: Path) -> None:
    from batch.storage.s3 import S3Store

    folder = open_store(str(tmp_path / "out"))
    assert isinstance(folder, LocalStore) and folder.location == str(tmp_path / "out")
    assert not (tmp_path / "out").exists()  # opening creates nothing
    bucket = open_store("s3://bucket/some/prefix/", endpoint_url="http://127.0.0.1:9")
    assert isinstance(bucket, S3Store) and (bucket.bucket, bucket.prefix) == ("bucket", "some/prefix/")
    assert bucket.location == "s3://bucket/some/prefix/"
    assert open_store("s3://bucket", client=object()).prefix == ""  # the whole bucket
    assert isinstance(open_store("s3-not-a-scheme/x"), LocalStore)  # only s3:// means S3
    with pytest.raises(ValueError, match="not an S3 URL"):
        open_store("s3:///no-bucket")


def test_open_job_stores_shares_one_client_and_names_the_bad_setting(tmp_path: Path) -> None:
    source, dest = open_job_stores(
        "s3://b/in", "s3://b/in/out", endpoint_url="http://127.0.0.1:9", spool_dir=None, max_input_bytes=1024
    )
    assert source.client is dest.client and source.max_bytes == 1024 and source._skip_prefix == "in/out/"
    with pytest.raises(ConfigError, match="^out: not an S3 URL"):
        open_job_stores(str(tmp_path), "s3://", endpoint_url=None, spool_dir=None, max_input_bytes=None)
    with pytest.raises(ConfigError, match="^source: not an S3 URL"):
        open_job_stores("s3://", str(tmp_path), endpoint_url=None, spool_dir=None, max_input_bytes=None)


@pytest.mark.parametrize(
    ("source", "dest"),
    [("in", "in"), ("in", "in/"), ("in", "in/sub/.."), ("s3://b/in", "s3://b/in/"), ("s3://b/in", "s3://b//in")],
)
def test_dest_that_is_source_itself_is_refused(tmp_path: Path, source: str, dest: str) -> None:
    (tmp_path / "in" / "sub").mkdir(parents=True)
    if not source.startswith("s3://"):
        source, dest = str(tmp_path / source), str(tmp_path / dest)
    with pytest.raises(ConfigError, match="out: DEST is SOURCE itself"):
        open_job_stores(source, dest, endpoint_url="http://127.0.0.1:9", spool_dir=None, max_input_bytes=None)


def test_a_missing_local_source_stops_the_job_when_opened(tmp_path: Path) -> None:
    with pytest.raises(EnvironmentProblem, match="SOURCE is not a readable folder"):
        open_job_stores(
            str(tmp_path / "nope"), str(tmp_path / "out"), endpoint_url=None, spool_dir=None, max_input_bytes=None
        )


def test_a_local_source_skips_a_local_dest_inside_it_only(tmp_path: Path) -> None:
    touch(tmp_path, "a.wav", "out/a.wav.json", "out/old.wav")
    source, _ = open_job_stores(
        str(tmp_path), str(tmp_path / "out"), endpoint_url=None, spool_dir=None, max_input_bytes=None
    )
    assert keys(source) == ["a.wav"]
    elsewhere = open_store(str(tmp_path), skip="s3://b/out")  # another kind of place is never inside a folder
    assert keys(elsewhere) == ["a.wav", "out/old.wav"]


# --- scanning a folder --------------------------------------------------------------------------------------


def test_scan_is_recursive_sorted_and_by_media_extension(tmp_path: Path) -> None:
    touch(tmp_path, "b/x.wav", "a/x.wav", "a/x.mp3", "a/clip.MP4", "notes.txt", "c/d/e.opus", "talk.webm", "z.mkv")
    assert keys(LocalStore(tmp_path)) == [
        "a/clip.MP4",
        "a/x.mp3",
        "a/x.wav",
        "b/x.wav",
        "c/d/e.opus",
        "talk.webm",
        "z.mkv",
    ]


def test_hidden_files_and_folders_are_never_taken(tmp_path: Path) -> None:
    touch(tmp_path, ".hidden.wav", ".cache/a.wav", "ok.wav", "sub/.partial.mp3")
    assert keys(LocalStore(tmp_path)) == ["ok.wav"]


def test_links_leaving_source_are_not_followed(tmp_path: Path) -> None:
    source, outside = tmp_path / "in", tmp_path / "outside"
    touch(source, "real.wav")
    touch(outside, "secret.wav", "dir/deep.wav")
    (source / "escape.wav").symlink_to(outside / "secret.wav")
    (source / "escape_dir").symlink_to(outside / "dir")
    (source / "inner.wav").symlink_to(source / "real.wav")
    (source / "loop").symlink_to(source)
    assert keys(LocalStore(source)) == ["inner.wav", "real.wav"]


def test_links_that_loop_or_lead_nowhere_are_left_out_and_the_listing_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 34 #12: one entry that cannot be followed never stops the listing of the others."""
    source = tmp_path / "in"
    touch(source, "a.wav", "z.wav")
    (source / "b.wav").symlink_to(source / "c.wav")
    (source / "c.wav").symlink_to(source / "b.wav")  # b -> c -> b
    (source / "d.wav").symlink_to(source / "gone.wav")  # dangling
    with caplog.at_level("WARNING"):
        assert keys(LocalStore(source)) == ["a.wav", "z.wav"]
    assert "b.wav: cannot be followed" in caplog.text and "c.wav: cannot be followed" in caplog.text


def folder_deeper_than_path_max(source: Path) -> str:
    """Real folders nested past PATH_MAX (4096): reading the first one whose path is that long fails
    (ENAMETOOLONG) even for root, as a folder without read permission does for anyone else. Its path under
    `source`."""
    names = [f"d{level:02d}" + "x" * 200 for level in range(22)]
    handle = os.open(source, os.O_RDONLY)
    for name in names:
        os.mkdir(name, dir_fd=handle)
        inner = os.open(name, os.O_RDONLY, dir_fd=handle)
        os.close(handle)
        handle = inner
    os.close(os.open("deep.wav", os.O_WRONLY | os.O_CREAT, dir_fd=handle))
    os.close(handle)
    folders = ("/".join(names[: depth + 1]) for depth in range(len(names)))
    return next(folder for folder in folders if len(os.fsencode(source / folder)) >= 4096)


def test_a_folder_that_cannot_be_read_is_counted_not_passed_over(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A subfolder the listing cannot read (permissions, I/O, a path past PATH_MAX) holds files that exist: the
    listing goes on with the others and says which folder it could not read, so they are not taken for none."""
    source = tmp_path / "in"
    touch(source, "a.wav", "zz/b.wav")
    deep = folder_deeper_than_path_max(source)
    counts = ListingCounts()
    with caplog.at_level("WARNING"):
        assert [item.key for item in LocalStore(source).list(counts=counts)] == ["a.wav", "zz/b.wav"]
    assert counts.unreadable == [(deep, "File name too long")]
    assert "this folder cannot be read" in caplog.text


def test_a_run_with_a_folder_it_cannot_read_does_the_rest_and_exits_3(cli, tmp_path: Path, tiny_en: str) -> None:
    source, out = tmp_path / "in", tmp_path / "out"
    speak(ENGLISH, source / "memo.wav")
    deep = folder_deeper_than_path_max(source)
    result = cli("run", source, "--out", out, "--model", tiny_en, "--device", "cpu", "--no-align")
    assert result.exit_code == 3, result.stderr
    (report_name,) = [name for name in os.listdir(out / "_runs") if name.endswith(".json")]
    report = json.loads((out / "_runs" / report_name).read_text())
    assert report["succeeded"] == ["memo.wav"]
    assert [entry["key"] for entry in report["left_for_next_run"]] == [f"{deep}/"]
    assert "could not be read (File name too long)" in report["left_for_next_run"][0]["error"]["message"]


def test_dest_inside_source_is_skipped(tmp_path: Path) -> None:
    touch(tmp_path, "a.wav", "out/a.wav.json", "out/old.wav")
    assert keys(LocalStore(tmp_path, skip=tmp_path / "out")) == ["a.wav"]


def test_include_and_exclude_globs_apply_to_keys(tmp_path: Path) -> None:
    touch(tmp_path, "calls/2024/a.wav", "calls/2024/b.mp3", "drafts/c.wav", "raw/d.pcm")
    source = LocalStore(tmp_path)
    assert keys(source, include=("*.wav",)) == ["calls/2024/a.wav", "drafts/c.wav"]
    assert keys(source, exclude=("drafts/*",)) == ["calls/2024/a.wav", "calls/2024/b.mp3"]
    assert keys(source, include=("raw/*",)) == ["raw/d.pcm"]  # include can take any extension


def test_globs_ignore_case_as_the_extension_filter_does(tmp_path: Path) -> None:
    touch(tmp_path, "Calls/A.WAV", "calls/b.Mp3", "Drafts/c.wav")
    source = LocalStore(tmp_path)
    assert keys(source) == ["Calls/A.WAV", "Drafts/c.wav", "calls/b.Mp3"]
    assert keys(source, include=("*.wav",)) == ["Calls/A.WAV", "Drafts/c.wav"]
    assert keys(source, include=("calls/*",), exclude=("*.MP3",)) == ["Calls/A.WAV"]
    assert keys(source, exclude=("drafts/*",)) == ["Calls/A.WAV", "calls/b.Mp3"]


def test_listing_counts_what_it_found_and_what_it_took(tmp_path: Path) -> None:
    from batch.storage import ListingCounts

    touch(tmp_path, "a.wav", "b.txt", ".hidden.wav", "c/d.mp3")
    counts = ListingCounts()
    assert keys(LocalStore(tmp_path), exclude=("c/*",), counts=counts) == ["a.wav"]
    assert (counts.listed, counts.selected) == (3, 1)


def test_a_single_file_source_lists_that_file_alone(tmp_path: Path) -> None:
    from batch.storage import open_source

    touch(tmp_path, "calls/a.wav", "calls/b.wav", "calls/notes.dat")
    single = open_source(str(tmp_path / "calls" / "notes.dat"))
    single.check_readable()
    assert keys(single) == ["notes.dat"] and single.location == str(tmp_path / "calls" / "notes.dat")
    assert keys(single, exclude=("*.dat",)) == []
    item = next(single.list())
    assert single.fingerprint(item).startswith("sha256:") and single.open(item.key).read() == b"x" * 10
    assert keys(open_source(str(tmp_path / "calls"))) == ["a.wav", "b.wav"]  # a folder is scanned as before
    assert isinstance(open_store(str(tmp_path / "calls" / "a.wav")), LocalStore)  # DEST is never a file's folder
    assert open_store(str(tmp_path / "calls" / "a.wav")).root == tmp_path / "calls" / "a.wav"


def test_unicode_and_spaces_survive(tmp_path: Path) -> None:
    touch(tmp_path, "Интервью/встреча 1.wav", "été & co/a+b=c%.mp3")
    assert keys(LocalStore(tmp_path)) == ["été & co/a+b=c%.mp3", "Интервью/встреча 1.wav"]
    assert is_selected("été & co/a+b=c%.mp3")


def test_missing_source_is_an_environment_error(tmp_path: Path) -> None:
    with pytest.raises(EnvironmentProblem, match="SOURCE is not a readable folder"):
        LocalStore(tmp_path / "nope").check_readable()
    with pytest.raises(EnvironmentProblem, match="DEST is not a readable folder"):
        LocalStore(tmp_path / "nope").check_readable("DEST")


def test_list_names_gives_any_name_below_a_folder_but_hidden_ones(tmp_path: Path) -> None:
    touch(
        tmp_path,
        "a.wav.manifest.json",
        "a.wav.json",
        "deep/b.mp3.manifest.json",
        "_runs/r1.json",
        "_runsx.json",
        "_runs/old/r0.json",
        ".a.wav.manifest.json.k2j3.tmp",
        ".trash/c.wav.manifest.json",
    )
    store = LocalStore(tmp_path)
    assert list(store.list_names(suffix=".manifest.json")) == ["a.wav.manifest.json", "deep/b.mp3.manifest.json"]
    assert list(store.list_names("_runs", ".json")) == ["_runs/old/r0.json", "_runs/r1.json"]
    assert list(store.list_names("_runs/")) == ["_runs/old/r0.json", "_runs/r1.json"]
    assert list(store.list_names("nothing-here")) == []
    assert list(LocalStore(tmp_path / "missing").list_names()) == []


# --- writing a folder ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["../x.wav", "a/../../x.wav", "", "/", "a/\x00.wav"])
def test_unsafe_keys_are_refused(key: str) -> None:
    with pytest.raises(ValueError):
        safe_relative(key)


def test_odd_but_safe_keys_stay_inside(tmp_path: Path) -> None:
    dest = LocalStore(tmp_path)
    assert dest.path("a//b.wav") == tmp_path / "a" / "b.wav"
    assert dest.path("/lead.wav") == tmp_path / "lead.wav"


def test_atomic_write_replaces_whole_and_leaves_no_temporary(tmp_path: Path) -> None:
    dest = LocalStore(tmp_path)
    dest.write_bytes("a/b.wav.json", b"first")
    dest.write_bytes("a/b.wav.json", b"second")
    assert (tmp_path / "a" / "b.wav.json").read_bytes() == b"second"
    assert os.listdir(tmp_path / "a") == ["b.wav.json"]


def test_failed_write_keeps_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    dest = LocalStore(tmp_path)
    dest.write_bytes("x.json", b"old")

    class Boom:
        def __len__(self) -> int:
            raise RuntimeError("disk on fire")

    with pytest.raises(TypeError):
        dest.write_bytes("x.json", Boom())  # type: ignore[arg-type]
    assert (tmp_path / "x.json").read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["x.json"]


def test_unwritable_dest_is_an_environment_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(EnvironmentProblem, match="DEST is not writable"):
        LocalStore(blocker / "out").check_writable()


def test_read_exists_delete_and_exclusive_create(tmp_path: Path) -> None:
    dest = LocalStore(tmp_path)
    assert dest.read_bytes("a/b.json") is None and not dest.exists("a/b.json")
    assert dest.create_exclusive("a/b.json", b"one") and not dest.create_exclusive("a/b.json", b"two")
    data, version = dest.read_with_version("a/b.json")
    assert data == b"one" and dest.exists("a/b.json")
    assert not dest.replace_if_version("a/b.json", b"three", "stale")
    assert dest.replace_if_version("a/b.json", b"three", version) and dest.read_bytes("a/b.json") == b"three"
    assert not dest.delete_if_version("a/b.json", version)  # the version read before the replace: kept
    assert dest.delete_if_version("a/b.json", dest.read_with_version("a/b.json")[1]) and not dest.exists("a/b.json")
    assert dest.create_exclusive("a/b.json", b"four") == dest.read_with_version("a/b.json")[1]
    dest.delete("a/b.json")
    dest.delete("a/b.json")  # deleting what is gone is fine
    assert not dest.exists("a/b.json") and os.listdir(tmp_path / "a") == []


def test_fingerprint_follows_content_not_name_or_time(tmp_path: Path) -> None:
    touch(tmp_path, "a.wav", "b.wav")
    source = LocalStore(tmp_path)
    first, second = list(source.list())
    assert source.fingerprint(first) == source.fingerprint(second)
    (tmp_path / "b.wav").write_bytes(b"y" * 10)
    assert source.fingerprint(first) != source.fingerprint(list(source.list())[1])


def test_outputs_get_the_usual_permissions_not_mkstemps_0600(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        LocalStore(tmp_path).write_bytes("a.json", b"{}")
    finally:
        os.umask(old)
    from batch.storage.local import _UMASK

    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o666 & ~_UMASK


# --- output names -------------------------------------------------------------------------------------------

# Keys that meet the spelling rules, and keys that look like what another key is spelled as.
TRICKY_KEYS = [
    "x.wav",
    "a/x.wav",
    "../x.wav",
    "%2E%2E/x.wav",
    "%252E%252E/x.wav",
    "./x.wav",
    "%2E/x.wav",
    "%2F/x.wav",
    "/x.wav",
    "//x.wav",
    "a//b.wav",
    "a/%2F/b.wav",
    "a/%2F%2F/b.wav",
    "a/./b.wav",
    "a/../b.wav",
    "a/%2E%2E/b.wav",
    "x.wav/",
    "x.wav/.",
    "x.wav/..",
    "...",
    ".../x.wav",
    "%",
    "%%",
    "%25",
    "%2",
    "%2E",
    "%2e",
    "%2F",
    "a%/b",
    "a%2F/b",
    "a/%",
    ".",
    "..",
    "",
    "/",
    "//",
    "100% done.wav",
    "%7E.wav",
    "~.wav",
    "ü ñ/é 1+&=%.mp3",
    "Интервью/встреча 1.wav",
    "日本語/会議.m4a",
    "emoji 🎙️.wav",
    "e\u0301.wav",
    "\u00e9.wav",
    "tab\t.wav",
    "line\nbreak.wav",
    "back\\slash.wav",
    os.fsdecode(b"caf\xe9 old share.mp3"),
    os.fsdecode(b"%2E\xff/x.wav"),
    os.fsdecode(b"\xe9\xe9/%25.wav"),
]


def test_output_names_are_injective_over_tricky_keys() -> None:
    bases = {key: output_base(key) for key in TRICKY_KEYS}
    assert len(set(TRICKY_KEYS)) == len(TRICKY_KEYS)
    assert len(set(bases.values())) == len(bases), {b: [k for k in bases if bases[k] == b] for b in bases.values()}


def test_output_names_are_injective_over_every_short_key_of_tricky_pieces() -> None:
    pieces = ["", ".", "..", "%", "%2E", "%2F", "%25", "a", "/", "\udcff", "%FF", "\ud800", "%uD800"]
    seen: dict[str, str] = {}
    for first in pieces:
        for second in pieces:
            for third in pieces:
                key = first + second + third
                base = output_base(key)
                assert seen.setdefault(base, key) == key, f"{key!r} and {seen[base]!r} share {base!r}"


@pytest.mark.parametrize("key", TRICKY_KEYS)
def test_output_names_never_leave_dest_and_keep_other_characters(tmp_path: Path, key: str) -> None:
    base = output_base(key)
    assert all(part not in ("", ".", "..") for part in base.split("/")) and base.count("/") == key.count("/")
    assert safe_relative(base).as_posix() == base  # a plain relative path: written exactly there, inside DEST
    assert (tmp_path / base).resolve().is_relative_to(tmp_path.resolve())
    assert base.encode("utf-8")  # every DEST can hold it, S3 included: no surrogate escape is left in it
    plain = [_byte_escaped(part.replace("%", "%25")) for part in key.split("/") if part not in ("", ".", "..")]
    assert plain == [part for part in base.split("/") if part not in ("%2F", "%2E", "%2E%2E")]


def _byte_escaped(text: str) -> str:
    """A name's bytes that are not UTF-8 (os.fsdecode's surrogate escapes) as `%XX`."""
    return "".join(f"%{ord(c) - 0xDC00:02X}" if "\udc80" <= c <= "\udcff" else c for c in text)


def test_output_names_spell_only_percent_and_dot_or_empty_components() -> None:
    assert output_base("calls/été 1+&=.wav") == "calls/été 1+&=.wav"
    assert output_base("../x.wav") == "%2E%2E/x.wav"
    assert output_base("%2E%2E/x.wav") == "%252E%252E/x.wav"
    assert output_base("a//b.wav") == "a/%2F/b.wav" and output_base("/lead.wav") == "%2F/lead.wav"
    assert output_base("./x.wav") == "%2E/x.wav" and output_base("100% done.wav") == "100%25 done.wav"
    assert output_base("...") == "..."  # not a dot segment
    assert output_base(os.fsdecode(b"caf\xe9/\xff.wav")) == "caf%E9/%FF.wav"  # a byte that is not UTF-8: %XX
    assert output_base("caf%E9/%FF.wav") == "caf%25E9/%25FF.wav"  # a name that holds `%E9` itself: never the same
    assert output_base("\ud800.wav") == "%uD800.wav"  # a lone surrogate of another kind (a JSON string's)


# --- names too long for a file system (issue 34 #11) ---------------------------------------------------------

LONG_KEYS = [
    "x" * 244 + ".wav",  # 248 characters: over NAME_MAX with any suffix
    "é" * 125 + ".wav",  # 129 characters, 254 bytes: NAME_MAX counts bytes
    "会" * 80 + ".m4a",  # 3 bytes a character
    "100% sure " * 24 + "#?.mp3",  # escapes make it longer still
    "d" * 300 + "/a.wav",  # a folder too long (an S3 key may have one)
    "d" * 300 + "/b.wav",
    "e" * 300 + "/a.wav",
    "x" * 244 + ".mp3",  # the same stem, another extension
    "x" * 244 + "y.wav",  # the same start, one character more
    "x" * 238 + "." + "w" * 40,  # an extension too long to keep
    os.fsdecode(b"\xff" * 250 + b".wav"),  # not UTF-8: surrogate escapes
    "a" * 239,  # exactly at the bound: kept whole
]


def test_long_components_are_shortened_to_leave_room_for_every_suffix() -> None:
    from batch.run.manifest import manifest_name, output_name
    from batch.run.work.claims import claim_name
    from batch.settings.options import OUTPUT_FORMATS
    from batch.storage.names import MAX_COMPONENT_BYTES, NAME_MAX_BYTES, name_bytes

    for key in LONG_KEYS + TRICKY_KEYS:
        names = [manifest_name(key), claim_name(key)] + [output_name(key, fmt) for fmt in OUTPUT_FORMATS]
        for name in names:
            assert all(name_bytes(part) <= NAME_MAX_BYTES for part in name.split("/")), name
        assert all(name_bytes(part) <= MAX_COMPONENT_BYTES for part in output_base(key).split("/"))
    assert output_base("a" * 239) == "a" * 239
    shortened = output_base("x" * 244 + ".wav")
    assert shortened.startswith("x" * 200) and shortened.endswith(".wav") and "%~" in shortened
    assert output_base("é" * 125 + ".wav").endswith(".wav")  # cut between characters, never inside one
    assert output_base("100% sure " * 24 + "#?.mp3").count("%~") == 1  # and never inside an escape
    assert output_base("d" * 300 + "/a.wav").split("/")[0] == output_base("d" * 300 + "/b.wav").split("/")[0]


def test_shortened_names_never_collide_with_each_other_or_with_a_whole_name() -> None:
    keys_ = LONG_KEYS + TRICKY_KEYS
    lookalike = output_base("x" * 244 + ".wav")  # a key spelled exactly as another key's shortened name
    keys_.append(lookalike)
    bases = {key: output_base(key) for key in keys_}
    assert len(set(bases.values())) == len(keys_)
    assert bases[lookalike] != lookalike


def test_a_name_at_name_max_is_written_though_its_temporary_would_be_longer(tmp_path: Path) -> None:
    dest = LocalStore(tmp_path)
    name = "é" * 125 + ".json"  # 255 bytes
    dest.write_bytes(name, b"whole")
    assert dest.read_bytes(name) == b"whole"
    assert dest.create_exclusive("c/" + name, b"claim") is not None
    assert os.listdir(tmp_path / "c") == [name]  # no temporary left behind


def test_a_file_replaced_after_its_listing_or_rewritten_while_read_is_not_read_as_the_version_listed(
    tmp_path: Path,
) -> None:
    """The folder's version is the mtime its listing saw: a file renamed over since then is refused when opened,
    one rewritten in place while it is read is refused when it is closed (its bytes may be half old, half new);
    neither is the file's fault, so no failed manifest: the next run does the new version."""
    from batch.common.errors import is_file_problem
    from batch.storage import InputChanged

    source = LocalStore(tmp_path)
    (tmp_path / "a.wav").write_bytes(b"old")
    listed = next(source.list())
    replacement = tmp_path / ".a.wav.new"
    replacement.write_bytes(b"new")
    os.utime(replacement, ns=(int(listed.version) + 10**9, int(listed.version) + 10**9))
    os.replace(replacement, tmp_path / "a.wav")
    with pytest.raises(InputChanged, match="replaced after it was listed"):
        source.open(listed.key, listed.size, listed.version)
    assert not is_file_problem(InputChanged("x"))

    current = next(source.list())
    with source.open(current.key, current.size, current.version) as stream:
        assert stream.read() == b"new"  # the version listed reads, and closes cleanly
    stream = source.open(current.key, current.size, current.version)
    (tmp_path / "a.wav").write_bytes(b"rewritten in place")
    os.utime(tmp_path / "a.wav", ns=(int(current.version) + 10**9, int(current.version) + 10**9))
    with pytest.raises(InputChanged, match="changed while it was read"):
        stream.close()
    assert stream.closed
