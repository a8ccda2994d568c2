"""Scanning SOURCE and writing DEST: selection, order, links, collisions, atomic writes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from batch.errors import EnvironmentProblem
from batch.storage import LocalDest, LocalSource, is_selected, safe_relative


def touch(root: Path, *names: str) -> None:
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x" * 10)


def keys(source: LocalSource, **kwargs: tuple[str, ...]) -> list[str]:
    return [item.key for item in source.list(**kwargs)]


def test_scan_is_recursive_sorted_and_by_media_extension(tmp_path: Path) -> None:
    touch(tmp_path, "b/x.wav", "a/x.wav", "a/x.mp3", "a/clip.MP4", "notes.txt", "c/d/e.opus", "talk.webm", "z.mkv")
    assert keys(LocalSource(tmp_path)) == [
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
    assert keys(LocalSource(tmp_path)) == ["ok.wav"]


def test_links_leaving_source_are_not_followed(tmp_path: Path) -> None:
    source, outside = tmp_path / "in", tmp_path / "outside"
    touch(source, "real.wav")
    touch(outside, "secret.wav", "dir/deep.wav")
    (source / "escape.wav").symlink_to(outside / "secret.wav")
    (source / "escape_dir").symlink_to(outside / "dir")
    (source / "inner.wav").symlink_to(source / "real.wav")
    (source / "loop").symlink_to(source)
    assert keys(LocalSource(source)) == ["inner.wav", "real.wav"]


def test_dest_inside_source_is_skipped(tmp_path: Path) -> None:
    touch(tmp_path, "a.wav", "out/a.wav.json", "out/old.wav")
    assert keys(LocalSource(tmp_path, skip=tmp_path / "out")) == ["a.wav"]


def test_include_and_exclude_globs_apply_to_keys(tmp_path: Path) -> None:
    touch(tmp_path, "calls/2024/a.wav", "calls/2024/b.mp3", "drafts/c.wav", "raw/d.pcm")
    source = LocalSource(tmp_path)
    assert keys(source, include=("*.wav",)) == ["calls/2024/a.wav", "drafts/c.wav"]
    assert keys(source, exclude=("drafts/*",)) == ["calls/2024/a.wav", "calls/2024/b.mp3"]
    assert keys(source, include=("raw/*",)) == ["raw/d.pcm"]  # include can take any extension


def test_unicode_and_spaces_survive(tmp_path: Path) -> None:
    touch(tmp_path, "Интервью/встреча 1.wav", "été & co/a+b=c%.mp3")
    assert keys(LocalSource(tmp_path)) == ["été & co/a+b=c%.mp3", "Интервью/встреча 1.wav"]
    assert is_selected("été & co/a+b=c%.mp3")


def test_missing_source_is_an_environment_error(tmp_path: Path) -> None:
    with pytest.raises(EnvironmentProblem, match="SOURCE is not a readable folder"):
        LocalSource(tmp_path / "nope")


@pytest.mark.parametrize("key", ["../x.wav", "a/../../x.wav", "", "/", "a/\x00.wav"])
def test_unsafe_keys_are_refused(key: str) -> None:
    with pytest.raises(ValueError):
        safe_relative(key)


def test_odd_but_safe_keys_stay_inside(tmp_path: Path) -> None:
    dest = LocalDest(tmp_path)
    assert dest.path("a//b.wav") == tmp_path / "a" / "b.wav"
    assert dest.path("/lead.wav") == tmp_path / "lead.wav"


def test_atomic_write_replaces_whole_and_leaves_no_temporary(tmp_path: Path) -> None:
    dest = LocalDest(tmp_path)
    dest.write_bytes("a/b.wav.json", b"first")
    dest.write_bytes("a/b.wav.json", b"second")
    assert (tmp_path / "a" / "b.wav.json").read_bytes() == b"second"
    assert os.listdir(tmp_path / "a") == ["b.wav.json"]


def test_failed_write_keeps_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    dest = LocalDest(tmp_path)
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
        LocalDest(blocker / "out").check_writable()


def test_fingerprint_follows_content_not_name_or_time(tmp_path: Path) -> None:
    touch(tmp_path, "a.wav", "b.wav")
    source = LocalSource(tmp_path)
    first, second = list(source.list())
    assert source.fingerprint(first) == source.fingerprint(second)
    (tmp_path / "b.wav").write_bytes(b"y" * 10)
    assert source.fingerprint(first) != source.fingerprint(list(source.list())[1])


def test_outputs_get_the_usual_permissions_not_mkstemps_0600(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        LocalDest(tmp_path).write_bytes("a.json", b"{}")
    finally:
        os.umask(old)
    from batch.storage import _UMASK

    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o666 & ~_UMASK
