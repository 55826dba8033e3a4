"""The documentation holds together: every relative link resolves, and no document names a path of one machine."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

FENCE = re.compile(r"^ {0,3}(```|~~~).*?^ {0,3}\1[^\n]*$", re.M | re.S)
CODE_SPAN = re.compile(r"(`+)(?!`).+?(?<!`)\1(?!`)", re.S)
INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^()\s<>]*)>?(?:\s+(?:\"[^\"]*\"|'[^']*'))?\s*\)")
REFERENCE = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)", re.M)
HTML_TARGET = re.compile(r"<(?:a|img)\b[^>]*?\b(?:href|src)\s*=\s*[\"']([^\"']+)[\"']", re.I)
HEADING = re.compile(r"^ {0,3}#{1,6}[ \t]+(.+?)[ \t#]*$", re.M)
HTML_ANCHOR = re.compile(r"<a\b[^>]*?\b(?:id|name)\s*=\s*[\"']([^\"']+)[\"']", re.I)
SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")

# A path that exists on one machine only: /work/..., /tmp/..., /home/..., C:\...
ABSOLUTE_PATH = re.compile(r"(?<![\w.])/(?:work|tmp|home|Users|root|mnt|scratch)/|(?<![\w])[A-Za-z]:\\(?=[\w.])")
TEXT_SUFFIXES = {".md", ".csv", ".txt", ".json"}


def markdown_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def prose(text: str) -> str:
    """The Markdown without code blocks and code spans, where link syntax is only text."""
    return CODE_SPAN.sub("", FENCE.sub("", text))


def link_targets(text: str) -> list[str]:
    body = prose(text)
    return [*INLINE_LINK.findall(body), *REFERENCE.findall(body), *HTML_TARGET.findall(body)]


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading keeps its text
    text = re.sub(r"<[^>]+>", "", text).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = FENCE.sub("", path.read_text(encoding="utf-8"))
    found: set[str] = set(HTML_ANCHOR.findall(text))
    seen: dict[str, int] = {}
    for heading in HEADING.findall(text):
        slug = github_slug(heading)
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        found.add(slug if n == 0 else f"{slug}-{n}")
    return found


def broken_links(path: Path) -> list[str]:
    problems = []
    for target in link_targets(path.read_text(encoding="utf-8")):
        if not target or SCHEME.match(target):
            continue  # http(s), mailto: not checked here
        file_part, _, anchor = target.partition("#")
        resolved = (path.parent / file_part).resolve() if file_part else path
        if not resolved.exists():
            problems.append(f"{target}: no such file")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            problems.append(f"{target}: no heading with anchor #{anchor}")
    return list(dict.fromkeys(problems))


def test_slug_matches_github():
    assert github_slug("Evci et al.'s own protocol (`evci-lenet5`, `evci-mlp`)") == \
        "evci-et-als-own-protocol-evci-lenet5-evci-mlp"
    assert github_slug("Per-layer Hessian spectra (`analysis.hessian --per-layer`)") == \
        "per-layer-hessian-spectra-analysishessian---per-layer"


def test_link_extraction_skips_code():
    text = "see [a](a.md#x) and ![b](img/b.png)\n\n```\n[c](nowhere.md)\n```\n`[d](nowhere.md)`\n"
    assert link_targets(text) == ["a.md#x", "img/b.png"]


def test_every_relative_link_and_image_resolves():
    problems = {str(p.relative_to(ROOT)): broken_links(p) for p in markdown_files()}
    problems = {name: found for name, found in problems.items() if found}
    assert not problems, "broken links:\n" + "\n".join(
        f"  {name}: {problem}" for name, found in problems.items() for problem in found)


def tracked_documents() -> list[Path]:
    try:
        listed = subprocess.run(["git", "ls-files", "--", "docs", "README.md"], cwd=ROOT, capture_output=True,
                                text=True, check=True).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: the tracked documents cannot be listed")
    return [ROOT / name for name in listed if Path(name).suffix in TEXT_SUFFIXES and (ROOT / name).is_file()]


def test_absolute_path_pattern():
    for text in ("/work/runs/tessera", "see /tmp/x", "(/home/me/data)", "C:\\Users\\me"):
        assert ABSOLUTE_PATH.search(text), text
    for text in ("runs/tmp/x", "https://github.com/a/b/tree/main/home/x", "~/data", "settings/paper-lenet5",
                 "/shared/runs", "docs/work/x"):
        assert not ABSOLUTE_PATH.search(text), text


def test_no_document_names_a_path_of_one_machine():
    """Reports and guides are read on other machines: a path like /work/runs/... means nothing there."""
    hits = []
    for path in tracked_documents():
        for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            match = ABSOLUTE_PATH.search(line)
            if match:
                hits.append(f"  {path.relative_to(ROOT)}:{number}: ...{line[max(0, match.start() - 30):match.end() + 30]}...")
    assert not hits, "absolute paths of one machine:\n" + "\n".join(hits)
