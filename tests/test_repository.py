"""Repository hygiene: nothing half-merged is shipped."""

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_no_merge_conflict_markers_in_tracked_files():
    try:
        files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    marker = re.compile(r"^(<{7} |={7}$|>{7} )", re.M)
    bad = [
        f
        for f in files
        if (ROOT / f).is_file()
        and (ROOT / f).suffix in {".py", ".md", ".toml", ".yaml", ".yml", ".txt", ""}
        and marker.search((ROOT / f).read_text(errors="ignore"))
    ]
    assert not bad, f"merge-conflict markers in {bad}"


# ---- documentation links ------------------------------------------------------------------------------------
_FENCE = re.compile(r"^(```|~~~).*?^\1", re.M | re.S)
_INLINE_CODE = re.compile(r"`[^`\n]*`")
_LINK = re.compile(r"!?\[[^\]\n]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.M)


def _prose(text: str) -> str:
    """Markdown without fenced code blocks and inline code (where brackets are code, not links)."""
    return _INLINE_CODE.sub("", _FENCE.sub("", text))


def _anchors(md: Path) -> set[str]:
    """GitHub's heading anchors of a markdown file: lower case, punctuation dropped, spaces to '-', repeats -1, -2."""
    seen: dict[str, int] = {}
    out = set()
    for title in _HEADING.findall(_FENCE.sub("", md.read_text())):
        title = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", title)  # a linked heading reads as its text
        slug = re.sub(r"[^\w\- ]", "", title.strip().lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def _check_target(source: Path, target: str, base: Path) -> str | None:
    """None if `target` (a relative path, optionally with #anchor) resolves from `base`; else the problem."""
    path, _, anchor = target.partition("#")
    dest = (base / path).resolve() if path else source
    if not dest.exists():
        return f"{source.relative_to(ROOT)}: link to missing {target}"
    if anchor and dest.suffix == ".md" and anchor.lower() not in _anchors(dest):
        return f"{source.relative_to(ROOT)}: link to missing heading #{anchor} in {dest.relative_to(ROOT)}"
    return None


def test_every_relative_markdown_link_in_the_docs_resolves():
    """README.md and docs/*.md: every relative link (and image) points to an existing file, and a #heading in a
    markdown file to an existing heading."""
    problems = []
    for md in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for target in _LINK.findall(_prose(md.read_text())):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # http:, https:, mailto: ...
                continue
            problem = _check_target(md, target, md.parent)
            if problem:
                problems.append(problem)
    assert not problems, "\n".join(problems)


def test_every_doc_path_in_the_packaged_configs_resolves():
    """The comments of dmpose/configs/**/*.yaml cite docs by repository path (docs/training.md#losses): all resolve."""
    cited = re.compile(r"\b((?:docs|benchmarks)/[\w./-]+?\.(?:md|py|png))(#[\w-]+)?")
    problems = []
    for cfg in sorted((ROOT / "dmpose" / "configs").rglob("*.yaml")):
        for line in cfg.read_text().splitlines():
            comment = line.partition("#")[2] if not line.lstrip().startswith("#") else line.lstrip()[1:]
            for path, anchor in cited.findall(comment):
                problem = _check_target(cfg, path + anchor, ROOT)
                if problem:
                    problems.append(problem)
    assert not problems, "\n".join(problems)
