"""README.md and docs/: every relative link and image points to a file that exists, an in-page
``#anchor`` names a heading of its page, the README stays short, and neither tells the project's
history (issue numbers, commit hashes): that belongs in CHANGELOG.md.

Links are markdown links and images (``[x](path)``, ``![x](path)``, ``[x]: path``) and HTML
``href`` / ``src`` attributes, outside code blocks and code spans. http(s) and mailto links are not
followed; ``path#anchor`` is checked for the file only.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parent.parent
README_MAX_LINES = 300

_FENCE = re.compile(r"^\s*(```|~~~)")
_CODE_SPAN = re.compile(r"(`+)(?:(?!\1)(?!\n[ \t]*\n)[\s\S])+?\1")  # may span lines, not paragraphs
_INLINE_LINK = re.compile(r"\]\(\s*(<[^>]*>|[^)\s]+)(?:\s+(?:\"[^\"]*\"|'[^']*'|\([^)]*\)))?\s*\)")
_REFERENCE_LINK = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*(<[^>]*>|\S+)", re.MULTILINE)
_HTML_LINK = re.compile(r"""\b(?:href|src)\s*=\s*["']([^"']+)["']""", re.IGNORECASE)
_ATX_HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
_SETEXT_UNDERLINE = re.compile(r"^\s{0,3}(=+|-+)\s*$")
_EXTERNAL = re.compile(r"^(?:https?:|mailto:|//)", re.IGNORECASE)

_ISSUE_WORD = re.compile(r"\b(?:issues?|pull requests?)\s*#?\d+\b", re.IGNORECASE)
_ISSUE_HASH = re.compile(r"(?<![\w&/#])#\d+\b")
_HEX = r"(?=[0-9a-f]*\d)(?=[0-9a-f]*[a-f])[0-9a-f]{7,40}"
_COMMIT_HASH = re.compile(rf"\bcommits?\b[\s`'\"(:]*\b{_HEX}\b|\b{_HEX}\b[\s`'\")]*\bcommit", re.IGNORECASE)
_CODE_HASH = re.compile(rf"`{_HEX}`")


def markdown_files(root: Path = ROOT) -> list[Path]:
    """README.md and every markdown file under docs/ (recursively)."""
    files = [root / "README.md"] if (root / "README.md").is_file() else []
    return files + sorted((root / "docs").rglob("*.md"))


def without_code_blocks(text: str) -> str:
    """``text`` with its fenced code blocks blanked (line count kept)."""
    out, fence = [], None
    for line in text.splitlines():
        match = _FENCE.match(line)
        if fence is None and match:
            fence = match.group(1)
            out.append("")
        elif fence is not None:
            if line.strip().startswith(fence):
                fence = None
            out.append("")
        else:
            out.append(line)
    return "\n".join(out)


def prose(text: str) -> str:
    """``text`` without code blocks and code spans: what a reader sees as running text."""
    return _CODE_SPAN.sub("", without_code_blocks(text))


def headings(text: str) -> list[str]:
    """The text of every ATX (``## x``) and setext (``x`` over ``---``) heading, in order."""
    found = []
    lines = without_code_blocks(text).splitlines()
    for i, line in enumerate(lines):
        match = _ATX_HEADING.match(line)
        if match:
            found.append(match.group(2))
        elif (i > 0 and _SETEXT_UNDERLINE.match(line) and lines[i - 1].strip()
              and not lines[i - 1].lstrip().startswith(("|", "-", "*", "+", ">"))
              and not _ATX_HEADING.match(lines[i - 1])):
            found.append(lines[i - 1].strip())
    return found


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: the link text of any link kept, HTML tags dropped,
    lower case, punctuation but ``-`` and ``_`` removed, each space a hyphen."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    text = re.sub(r"<[^>]+>", "", text)
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


def anchors(text: str) -> set[str]:
    """Every anchor of a page, with GitHub's -1, -2, ... suffixes for repeated headings."""
    seen: dict[str, int] = {}
    out = set()
    for heading in headings(text):
        slug = github_slug(heading)
        if slug in seen:
            seen[slug] += 1
            out.add(f"{slug}-{seen[slug]}")
        else:
            seen[slug] = 0
            out.add(slug)
    return out


def link_targets(text: str) -> list[str]:
    """Every link and image target of a page, outside code."""
    visible = prose(text)
    targets = [m.group(1) for m in _INLINE_LINK.finditer(visible)]
    targets += [m.group(1) for m in _REFERENCE_LINK.finditer(visible)]
    targets += [m.group(1) for m in _HTML_LINK.finditer(visible)]
    return [t[1:-1] if t.startswith("<") and t.endswith(">") else t for t in targets]


def broken_links(page: Path) -> list[str]:
    """One message per relative link of ``page`` that points to no file, or in-page anchor that
    names no heading of ``page``."""
    text = page.read_text(encoding="utf-8")
    problems = []
    for target in link_targets(text):
        if _EXTERNAL.match(target):
            continue
        path, _, anchor = target.partition("#")
        if not path:
            if anchor not in anchors(text):
                problems.append(f"{page.name}: #{anchor} names no heading of this page")
            continue
        resolved = (page.parent / unquote(path)).resolve()
        if not resolved.exists():
            problems.append(f"{page.name}: {target} -> {resolved} does not exist")
    return problems


def history_references(text: str) -> list[str]:
    """Issue references and commit hashes in ``text`` (they belong in CHANGELOG.md)."""
    found = [m.group(0) for m in _ISSUE_WORD.finditer(without_code_blocks(text))]
    found += [m.group(0) for m in _ISSUE_HASH.finditer(_INLINE_LINK.sub("]()", prose(text)))]
    found += [m.group(0) for m in _COMMIT_HASH.finditer(text)]
    found += [m.group(0) for m in _CODE_HASH.finditer(text)]
    return found


# ---- the checker itself ---------------------------------------------------------------------------


def test_the_link_checker_reports_a_broken_link_and_a_missing_anchor(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "good.md").write_text("# Good page\n")
    page = tmp_path / "README.md"
    page.write_text(
        "# Title\n\n## The `main` job: 2 steps\n\n"
        "[good](docs/good.md) [good with anchor](docs/good.md#good-page) ![image](docs/good.md)\n"
        "[broken](docs/missing.md) [web](https://example.org/x) [mail](mailto:a@b.c)\n"
        "[in page](#the-main-job-2-steps) [bad anchor](#no-such-heading)\n\n"
        "```\n[in code](docs/also-missing.md)\n```\n"
        "`[in a span](docs/span-missing.md)` and `a span over\n[two lines](docs/span-missing.md)`\n")
    problems = broken_links(page)
    assert len(problems) == 2, problems
    assert "docs/missing.md" in problems[0]
    assert "#no-such-heading" in problems[1]
    assert markdown_files(tmp_path) == [page, tmp_path / "docs" / "good.md"]
    assert broken_links(tmp_path / "docs" / "good.md") == []


@pytest.mark.parametrize("heading, slug", [
    ("Quick start", "quick-start"),
    ("Study 2, measured: `python -m barlab.train -m -cd sweeps -cn head_type`",
     "study-2-measured-python--m-barlabtrain--m--cd-sweeps--cn-head_type"),
    ("The head question: why MBM loses here, and by how much",
     "the-head-question-why-mbm-loses-here-and-by-how-much"),
    ("Tables and figures: `barlab.analysis` and `notebooks/`", "tables-and-figures-barlabanalysis-and-notebooks"),
    ("Running on a SLURM cluster with N GPUs per node", "running-on-a-slurm-cluster-with-n-gpus-per-node"),
])
def test_github_slugs(heading, slug):
    assert github_slug(heading) == slug


def test_repeated_headings_get_numbered_anchors():
    assert anchors("## Notes\n\ntext\n\n## Notes\n\nSetext\n---\n") == {"notes", "notes-1", "setext"}


def test_history_references_are_found_and_ordinary_text_is_not():
    assert history_references("as measured before issue 10") == ["issue 10"]
    assert history_references("fixed in #12.") == ["#12"]
    assert history_references("before commit 48b7c75 the loss") == ["commit 48b7c75"]
    assert history_references("at `ccb7f3f`, the same code") == ["`ccb7f3f`"]
    assert history_references(
        "2,048 sequences, 0.197 TFLOP/s, a committed file, [x](#1-intro), `error: job #0 failed`,\n"
        "```\nsacct # 3 jobs\n```\n") == []


# ---- the repository's documentation -------------------------------------------------------------


def test_there_is_documentation_to_check():
    files = markdown_files()
    assert ROOT / "README.md" in files and len(files) > 1


@pytest.mark.parametrize("page", markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_and_image_exists(page):
    assert broken_links(page) == []


def test_the_readme_links_every_docs_page():
    linked = {(ROOT / t.partition("#")[0]).resolve() for t in link_targets((ROOT / "README.md").read_text())
              if not _EXTERNAL.match(t)}
    unlinked = [str(p.relative_to(ROOT)) for p in markdown_files()[1:] if p.resolve() not in linked]
    assert unlinked == [], f"README.md links none of {unlinked}"


def test_readme_is_at_most_300_lines():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; move detail into docs/"


@pytest.mark.parametrize("page", markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_issue_numbers_or_commit_hashes(page):
    found = history_references(page.read_text(encoding="utf-8"))
    assert found == [], f"{page.relative_to(ROOT)}: {found} (history belongs in CHANGELOG.md)"
