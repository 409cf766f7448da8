"""The documentation holds together: every relative link in README.md, DATASETS.md and docs/*.md
points at a file that exists (and an `#anchor` into a Markdown file at one of its headings, by
GitHub's rules), every docs page is listed in the README and opens with a title and a one-line
purpose, and the README stays short enough to read in five minutes (at most 250 lines)."""
import glob
import os.path as osp
import re

import pytest

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
README = osp.join(REPO, "README.md")
DOCS = sorted(glob.glob(osp.join(REPO, "docs", "*.md")))
PAGES = [README, osp.join(REPO, "DATASETS.md")] + DOCS
MAX_README_LINES = 250

FENCE = re.compile(r"^\s*(```|~~~)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
INLINE_CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"\[[^\]\n]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def prose_lines(text):
    """The lines outside fenced code blocks (a `# comment` in a bash block is no heading)."""
    inside = False
    for line in text.splitlines():
        if FENCE.match(line):
            inside = not inside
            continue
        if not inside:
            yield line


def github_slug(heading):
    """GitHub's anchor for a heading: the rendered text (code spans and links keep their text),
    lowercased, everything but letters, digits, spaces, '-' and '_' dropped, spaces to '-'."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # [text](url) -> text
    text = text.replace("`", "").replace("*", "")
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


def anchors(path):
    """Every heading's anchor in a Markdown file; repeated headings get -1, -2, ... as on GitHub."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    seen, result = {}, set()
    for line in prose_lines(text):
        m = HEADING.match(line)
        if not m:
            continue
        slug = github_slug(m.group(2))
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        result.add(slug if n == 0 else f"{slug}-{n}")
    return result


def links(path):
    """The link targets of a Markdown file, outside code blocks and code spans."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    for line in prose_lines(text):
        yield from LINK.findall(INLINE_CODE.sub("", line))


def broken_links(path):
    """(target, why) for each relative link of `path` that leads nowhere."""
    broken = []
    for target in links(path):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto: ...: not checked here
            continue
        file_part, _, anchor = target.partition("#")
        dest = osp.normpath(osp.join(osp.dirname(path), file_part)) if file_part else path
        if not osp.exists(dest):
            broken.append((target, f"{osp.relpath(dest, REPO)} does not exist"))
        elif anchor and dest.endswith(".md") and anchor not in anchors(dest):
            broken.append((target, f"no heading with anchor #{anchor} in {osp.relpath(dest, REPO)}"))
    return broken


def test_github_slug_follows_githubs_rules():
    assert github_slug("Using the student: predict, export, your own data") == \
        "using-the-student-predict-export-your-own-data"
    assert github_slug("Memory: training the ViT-L/14 teacher on a 16 GB GPU (activation checkpointing)") == \
        "memory-training-the-vit-l14-teacher-on-a-16-gb-gpu-activation-checkpointing"
    assert github_slug("`train.py`") == "trainpy"
    assert github_slug("Why the student's zero-shot is so low, and what that means") == \
        "why-the-students-zero-shot-is-so-low-and-what-that-means"
    assert github_slug("ImageNetV2") == "imagenetv2"


def test_checker_finds_missing_files_and_anchors(tmp_path):
    (tmp_path / "other.md").write_text("# Title\n\n## Same\n\n## Same\n\n```bash\n# not a heading\n```\n")
    page = tmp_path / "page.md"
    page.write_text("[ok](other.md#same-1) [ok](#here) [web](https://example.com/x.md)\n"
                    "`[in code](gone.md)`\n\n# Here\n\n"
                    "[gone](gone.md) [bad anchor](other.md#not-a-heading) [code](other.md#not-a-heading-1)\n"
                    "```\n[in a block](gone2.md)\n```\n")
    found = [t for t, _ in broken_links(str(page))]
    assert found == ["gone.md", "other.md#not-a-heading", "other.md#not-a-heading-1"]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: osp.relpath(p, REPO))
def test_relative_links_lead_somewhere(page):
    assert broken_links(page) == []


def test_readme_is_short():
    with open(README, encoding="utf-8") as f:
        n = len(f.read().splitlines())
    assert n <= MAX_README_LINES, f"README.md has {n} lines; move detail to a docs/ page (limit {MAX_README_LINES})"


def test_readme_lists_every_docs_page():
    listed = {osp.normpath(osp.join(REPO, t.partition("#")[0])) for t in links(README)}
    assert [osp.relpath(p, REPO) for p in DOCS if p not in listed] == []


@pytest.mark.parametrize("page", DOCS, ids=lambda p: osp.relpath(p, REPO))
def test_docs_page_opens_with_title_and_purpose(page):
    with open(page, encoding="utf-8") as f:
        lines = f.read().splitlines()
    assert lines[0].startswith("# "), "first line: the page's title"
    assert lines[1] == "" and lines[2].strip() and (len(lines) == 3 or lines[3] == ""), \
        "after the title: one line saying what the page is for, then a blank line"
