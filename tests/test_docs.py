"""README.md and docs/: every link resolves, and every command marked runnable runs as written.

A fenced block preceded by the line `<!-- runnable -->` is executed by bash from the repository root, in the
project's environment (its `python` first on PATH), the way a reader would paste it; it must exit 0. Mark only
cheap commands that change nothing (a `--help`, a listing).
"""
import os
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from mvlib import paths

ROOT = paths.ROOT
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
RUNNABLE = re.compile(r"^<!-- runnable -->\n```(\w*)\n(.*?)^```$", re.M | re.S)
FENCE = re.compile(r"^```.*?^```$", re.M | re.S)
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def runnable_blocks(text: str) -> list[str]:
    """The fenced blocks marked runnable, each as bash source; a marked block that is not bash is an error."""
    blocks = []
    for lang, body in RUNNABLE.findall(text):
        if lang not in ("bash", "sh"):
            raise ValueError(f"a runnable block must be a bash block, not {lang or 'unnamed'!r}:\n{body}")
        blocks.append(body)
    return blocks


def run_block(body: str) -> subprocess.CompletedProcess:
    """Run a block as a reader would paste it: bash from the repository root, this environment's python first."""
    env = os.environ | {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    return subprocess.run(["bash", "-euo", "pipefail", "-c", body], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)


def _blocks() -> list:
    return [pytest.param(body, id=f"{page.relative_to(ROOT)}-{i}")
            for page in PAGES for i, body in enumerate(runnable_blocks(page.read_text()))]


@pytest.mark.parametrize("body", _blocks())
def test_a_runnable_command_runs_as_written(body):
    done = run_block(body)
    assert done.returncode == 0, f"{body}\nexited {done.returncode}:\n{done.stdout[-2000:]}{done.stderr[-3000:]}"


def test_runnable_blocks_are_found_and_their_failures_seen():
    """The marker is read as documented (so a page's runnable blocks are not silently none), and a failing
    command fails the check."""
    assert len(_blocks()) >= 4
    page = "text\n\n<!-- runnable -->\n```bash\necho one\nfalse\necho two\n```\n\n```bash\nrm -rf /\n```\n"
    (body,) = runnable_blocks(page)
    assert body == "echo one\nfalse\necho two\n"
    done = run_block(body)
    assert done.returncode != 0 and done.stdout == "one\n"
    with pytest.raises(ValueError, match="must be a bash block"):
        runnable_blocks("<!-- runnable -->\n```python\nprint(1)\n```\n")


# --- links ---------------------------------------------------------------------------------------------------------
def slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(markdown: str) -> set[str]:
    """The anchors of a page's headings."""
    return {slug(h) for h in re.findall(r"^#{1,6} (.+)$", FENCE.sub("", markdown), re.M)}


def broken_links(source: Path, text: str) -> list[str]:
    """Links of a markdown text (in `source`) to a file that does not exist or a heading that a page does not have."""
    own = anchors(text)
    broken = []
    for target in LINK.findall(re.sub(r"`[^`\n]*`", "", FENCE.sub("", text))):  # code is not a link
        if re.match(r"[a-z]+:", target):  # http:, https:, mailto: are not checked here (no network in CI)
            continue
        path, _, anchor = target.partition("#")
        file = (source.parent / path).resolve()
        if not path:
            broken += [target] if anchor not in own else []
        elif not file.exists() or not file.is_relative_to(ROOT):
            broken.append(target)
        elif anchor and file.suffix == ".md" and anchor not in anchors(file.read_text()):
            broken.append(target)
    return broken


def test_anchors_are_githubs():
    assert slug("Module → notebook → test") == "module--notebook--test"
    assert slug("2026-11-24: the committed run (NVIDIA H200, full profile)") == \
        "2026-11-24-the-committed-run-nvidia-h200-full-profile"
    assert slug("The SiLU plugin with pip-installed TensorRT") == "the-silu-plugin-with-pip-installed-tensorrt"


def test_a_broken_link_is_found(tmp_path):
    page = ROOT / "docs" / "x.md"  # resolved beside the real pages, never written
    text = "[a](runs.md) [b](runs.md#publishing) [c](nope.md) [d](runs.md#nope) [e](#nope) `[f](nope.md)` " \
           "[g](https://example.com/nope) ![h](../figures/nope.png)"
    assert broken_links(page, text + "\n## Here\n[i](#here)") == ["nope.md", "runs.md#nope", "#nope",
                                                                  "../figures/nope.png"]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_link_resolves(page):
    assert broken_links(page, page.read_text()) == []


def test_every_docs_page_is_linked_from_the_readme():
    readme = (ROOT / "README.md").read_text()
    assert [p.name for p in PAGES[1:] if f"(docs/{p.name}" not in readme] == []


def test_notebook_links_resolve():
    """The notebooks' text links to docs pages (dated findings) from notebooks/."""
    broken = {nb.name: found for nb in sorted(paths.NOTEBOOKS.glob("*.ipynb"))
              if (found := broken_links(nb, "\n\n".join(c.source for c in nbformat.read(nb, as_version=4).cells
                                                        if c.cell_type == "markdown")))}
    assert broken == {}
