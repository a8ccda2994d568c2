"""The documentation stays true to the code: every relative link resolves, and the options reference names every
setting (config key, environment variable, flag) that `whisperx-batch run` takes."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import typer

from batch.cli import app
from batch.settings.options import FIELD_NAMES, env_name

ROOT = Path(__file__).resolve().parent.parent
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "k8s" / "README.md"]
OPTIONS = ROOT / "docs" / "options.md"
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.DOTALL | re.MULTILINE)


def prose(path: Path) -> str:
    """The Markdown outside code blocks (a `[x](y)` in a shell example is not a link)."""
    return FENCE.sub("", path.read_text(encoding="utf-8"))


def anchors(path: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to dashes."""
    headings = re.findall(r"^#+\s+(.+?)\s*$", prose(path), re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-") for heading in headings}


def relative_links(path: Path) -> list[str]:
    return [target for target in LINK.findall(prose(path)) if not re.match(r"[a-z]+:", target)]


@pytest.mark.parametrize("doc", DOC_FILES, ids=lambda path: str(path.relative_to(ROOT)))
def test_relative_links_resolve(doc: Path) -> None:
    broken = []
    for target in relative_links(doc):
        file_part, _, anchor = target.partition("#")
        linked = (doc.parent / file_part).resolve() if file_part else doc
        if not linked.exists():
            broken.append(f"{target}: no such file")
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
            broken.append(f"{target}: no heading #{anchor} in {linked.relative_to(ROOT)}")
    assert not broken, f"{doc.relative_to(ROOT)}: " + "; ".join(broken)


def test_the_link_check_finds_a_broken_link(tmp_path: Path) -> None:
    (tmp_path / "other.md").write_text("# A heading\n")
    page = tmp_path / "page.md"
    page.write_text("[ok](other.md#a-heading) [gone](missing.md) [no anchor](other.md#nope)\n```\n[x](code.md)\n```\n")
    assert relative_links(page) == ["other.md#a-heading", "missing.md", "other.md#nope"]
    assert anchors(tmp_path / "other.md") == {"a-heading"}


def run_flags() -> set[str]:
    command = typer.main.get_command(app).commands["run"]  # type: ignore[attr-defined]
    return {flag for param in command.params for flag in (*param.opts, *param.secondary_opts) if flag != "--help"}


def test_the_options_reference_names_every_setting() -> None:
    text = OPTIONS.read_text(encoding="utf-8")
    missing = [f"`{key}`" for key in FIELD_NAMES if f"`{key}`" not in text]
    missing += [env_name(key) for key in FIELD_NAMES if env_name(key) not in text]
    missing += [flag for flag in sorted(run_flags()) if not re.search(rf"[`/]{re.escape(flag)}[`/,]", text)]
    assert not missing, f"docs/options.md does not mention: {', '.join(missing)}"


def test_run_flags_are_read_from_the_real_command() -> None:
    flags = run_flags()
    assert {"--out", "-o", "--batch-size", "--no-align", "--vad-step"} <= flags
    assert "SOURCE" not in flags and not any(flag.startswith("--help") for flag in flags)
