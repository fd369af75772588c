"""The documentation is kept honest by running and resolving it.

**Runnable snippets.** Every fenced block opened with ```` ```python runnable ```` in README.md, docs/ and the
integration packages' READMEs is executed; blocks opened with a plain ```` ```python ```` are illustrations (a 7B
model on a GPU, a server that must be started first) and are not. Each runnable block runs in a fresh namespace, as
a reader who copies one block runs it: it must stand on its own, imports included. Snippets are written as a user
writes them, for the default model (``DiffuSpec.from_pretrained()``, ``ChatDiffuSpec()``, ``DiffuSpecLLM()``); here
the default preset is swapped for ``"tiny"`` (the 6M demo pair) by setting ``diffuspec.presets.DEFAULT_PRESET``
(``_SWAP_DEFAULT``), so the test is fast and needs no large model. Snippets that name a model run as written. They
all run in one child process (the swap never touches this one), offline (``HF_HUB_OFFLINE=1``), each reported as
its own test with its traceback.

**Links.** Every relative link and image in README.md and docs/ must name a file or folder of the repository, and a
``#anchor`` must name a heading of the Markdown file it points to (GitHub's heading slugs). Pages that another part
of the project is still writing may be listed in ``PENDING_PAGES``: links to them are skipped only while the file
does not exist; once it does, its links and anchors are checked like any other. The package READMEs are shown on a
package index page on their own, so they may hold no relative link at all.

**On the default model.** The same snippets also run as written, on the real default model, in a test marked
``slow`` (skipped by default; ``-m slow`` runs it, ``-s`` shows each snippet's output).

**Set-up commands.** README's command 1 installs what ``.ci/run`` installs, and both run the same test command.

**Words about the making.** The documentation describes the software, never how it was made: sessions, leads,
helpers, issue numbers ("issue #", "issue 2"), numbered builds and stories such as "we tried" are refused, with the
file and line.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shlex
import subprocess
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PENDING_PAGES: set[str] = set()
RUNNABLE_FENCE = "```python runnable"
FORBIDDEN = {
    r"\bsessions?\b": "a session",
    r"\bleads?\b(?!\s+to\b)": "the lead",
    r"\bhelpers?\b": "a helper",
    r"\bissues?\s*(?:#\s*\w*|\d+)": "an issue number",
    r"\bbuild\s+\d+\b": "a numbered build",
    r"\bwe\s+(?:tried|found|decided|measured|switched|chose)\b": "a story of the making",
}
# What the child process patches to swap the default model for "tiny" (see the module docstring).
_SWAP_DEFAULT = """
import diffuspec.presets

diffuspec.presets.DEFAULT_PRESET = "tiny"
"""


def doc_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def package_readmes() -> list[Path]:
    """The integration packages' READMEs: shown on a package index page on their own, so no relative links."""
    return sorted((ROOT / "integrations").glob("*/README.md"))


def rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


@dataclass(frozen=True)
class Snippet:
    page: str
    line: int  # of the opening fence, 1-based
    code: str

    @property
    def name(self) -> str:
        return f"{self.page}:{self.line}"


def fenced_blocks(text: str) -> list[tuple[int, str, str]]:
    """(line of the opening fence, its info string, the block's text) for each fenced block."""
    blocks, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        match = re.match(r"^(\s*)(```+)(.*)$", lines[i])
        if match:
            indent, fence, info = match.groups()
            end = next((j for j in range(i + 1, len(lines)) if lines[j].strip() == fence), len(lines))
            body = [line[len(indent):] if line.startswith(indent) else line for line in lines[i + 1 : end]]
            blocks.append((i + 1, info.strip(), "\n".join(body)))
            i = end
        i += 1
    return blocks


def snippets() -> list[Snippet]:
    found = []
    for path in [*doc_files(), *package_readmes()]:
        for line, info, code in fenced_blocks(path.read_text()):
            if f"```{info}" == RUNNABLE_FENCE:
                found.append(Snippet(rel(path), line, code))
    return found


def prose(text: str) -> str:
    """``text`` with fenced blocks and inline code blanked (line numbers kept): links live in prose only."""
    lines = text.splitlines()
    for line, _, code in fenced_blocks(text):
        for j in range(line - 1, line + code.count("\n") + 2):
            if j < len(lines):
                lines[j] = ""
    return "\n".join(re.sub(r"`[^`]*`", "", line) for line in lines)


def heading_slugs(path: Path) -> set[str]:
    """GitHub's anchors of a Markdown file's headings: lower case, punctuation dropped, spaces as hyphens, a
    repeated slug numbered -1, -2, ..."""
    slugs: set[str] = set()
    for line in prose(path.read_text()).splitlines():
        match = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not match:
            continue
        title = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", match.group(1))  # a link's text only
        slug = re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")
        candidate, n = slug, 0
        while candidate in slugs:
            n += 1
            candidate = f"{slug}-{n}"
        slugs.add(candidate)
    return slugs


def links(path: Path) -> list[tuple[int, str]]:
    """(line, target) of every Markdown link and image in ``path``'s prose."""
    found = []
    for number, line in enumerate(prose(path.read_text()).splitlines(), start=1):
        for target in re.findall(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)", line):
            found.append((number, target))
    return found


# ----- links ---------------------------------------------------------------------------------------------------


def broken_links(path: Path) -> list[str]:
    problems = []
    for line, target in links(path):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto: ...
            continue
        file_part, _, anchor = target.partition("#")
        resolved = (path.parent / file_part).resolve() if file_part else path
        where = f"{rel(path)}:{line}: {target}"
        if not resolved.is_relative_to(ROOT):
            problems.append(f"{where} points outside the repository")
            continue
        if not resolved.exists():
            if rel(resolved) not in PENDING_PAGES:
                problems.append(f"{where}: no such file")
            continue
        if anchor and resolved.suffix == ".md" and anchor not in heading_slugs(resolved):
            problems.append(f"{where}: no heading with the anchor #{anchor} in {rel(resolved)}")
    return problems


@pytest.mark.parametrize("page", doc_files(), ids=rel)
def test_every_relative_link_resolves(page):
    assert not broken_links(page), "\n".join(broken_links(page))


@pytest.mark.parametrize("page", package_readmes(), ids=rel)
def test_package_readmes_stand_on_their_own(page):
    relative = [f"{rel(page)}:{line}: {target}" for line, target in links(page)
                if not re.match(r"^[a-z][a-z0-9+.-]*:", target)]
    assert not relative, "a package index page cannot follow relative links:\n" + "\n".join(relative)


def test_the_link_checker_sees_broken_links_and_anchors(tmp_path, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text("# A page\n\n## Set-up: two commands\n")
    page = tmp_path / "README.md"
    page.write_text(
        "[ok](docs/a.md#set-up-two-commands) [gone](docs/b.md) [bad anchor](docs/a.md#setup)\n"
        "`[in code](nowhere.md)` [web](https://example.com) ![img](docs/missing.png) [self](#a-title)\n# A title\n"
    )
    problems = broken_links(page)
    assert [p.split(": ", 1)[1] for p in problems] == [
        "docs/b.md: no such file",
        "docs/a.md#setup: no heading with the anchor #setup in docs/a.md",
        "docs/missing.png: no such file",
    ]


# ----- set-up commands -----------------------------------------------------------------------------------------


def pip_install(command: str) -> set[str]:
    """The requirements and options of the ``pip install`` in a shell command (``--quiet`` aside)."""
    lines = [line for line in command.replace("\\\n", " ").splitlines() if not line.lstrip().startswith("#")]
    for part in re.split(r"&&|;|\n", "\n".join(lines)):
        if part.strip().startswith("pip install"):
            return {w for w in shlex.split(part)[2:] if w not in ("--quiet", "-q")}
    raise AssertionError(f"no pip install in {command!r}")


def test_readme_setup_commands_are_the_ones_ci_runs():
    text = (ROOT / "README.md").read_text()
    setup = text.split("## Set-up", 1)[1]
    command_1, command_2 = [line for _, info, code in fenced_blocks(setup)[:1] for line in code.splitlines()
                            if line.strip() and not line.lstrip().startswith("#")]
    ci = (ROOT / ".ci" / "run").read_text()
    assert pip_install(command_1) == pip_install(ci)
    assert command_2.strip() in ci.splitlines()


# ----- words about the making ----------------------------------------------------------------------------------


def process_words(path: Path) -> list[str]:
    found = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        for pattern, what in FORBIDDEN.items():
            for match in re.finditer(pattern, line, re.IGNORECASE):
                found.append(f"{rel(path)}:{number}: {what} ({match.group(0)!r})")
    return found


def model_cards() -> list[Path]:
    """The cards of the models the package ships (the default model's tuning and drafter, the demo pair)."""
    return sorted((ROOT / "diffuspec").glob("*/**/README.md"))


@pytest.mark.parametrize("page", [*doc_files(), *package_readmes(), *model_cards()], ids=rel)
def test_no_words_about_the_making(page):
    assert not process_words(page), "\n".join(process_words(page))


def test_the_word_check_sees_them(tmp_path, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    page = tmp_path / "page.md"
    page.write_text("As this session found, issue #26\nthe lead will; chat build 4\nleading helpers, issues 1 and 2\n"
                    "see issue #, issue 2; we tried it\nthe leads say; this leads to a leak\n")
    assert [p.split(": ", 1)[1] for p in process_words(page)] == [
        "a session ('session')", "an issue number ('issue #26')", "the lead ('lead')", "a numbered build ('build 4')",
        "a helper ('helpers')", "an issue number ('issues 1')",
        "an issue number ('issue #')", "an issue number ('issue 2')", "a story of the making ('we tried')",
        "the lead ('leads')",
    ]


# ----- runnable snippets ---------------------------------------------------------------------------------------


def run_snippets(snippets_file: str, results_file: str, swap_default: bool) -> None:
    """In the child process: swap the default model (unless asked not to), run each snippet, record its output or
    traceback."""
    if swap_default:
        exec(compile(_SWAP_DEFAULT, "_SWAP_DEFAULT", "exec"), {})
    results = {}
    for item in json.loads(Path(snippets_file).read_text()):
        out = io.StringIO()
        try:
            with contextlib.redirect_stdout(out):
                exec(compile(item["code"], item["name"], "exec"), {"__name__": "__main__"})
            results[item["name"]] = {"ok": True, "output": out.getvalue()}
        except BaseException:  # noqa: BLE001 (a snippet's SystemExit or KeyboardInterrupt is its failure too)
            results[item["name"]] = {"ok": False, "output": out.getvalue(), "error": traceback.format_exc()}
    Path(results_file).write_text(json.dumps(results))


def snippet_results(chosen: list[Snippet], tmp_dir: Path, swap_default: bool = True) -> dict:
    todo, done = tmp_dir / "snippets.json", tmp_dir / "results.json"
    todo.write_text(json.dumps([{"name": s.name, "code": s.code} for s in chosen]))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    command = [sys.executable, __file__, str(todo), str(done), "tiny" if swap_default else "default"]
    child = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT, timeout=3600)
    assert child.returncode == 0 and done.exists(), child.stderr[-4000:]
    return json.loads(done.read_text())


def selected(request, test_name: str) -> list[Snippet]:
    """The snippets of ``test_name`` this run selected (all of them, or those picked with -k or node ids)."""
    return [item.callspec.params["snippet"] for item in request.session.items
            if item.originalname == test_name and item.module is sys.modules[__name__]]


@pytest.fixture(scope="module")
def results(request, tmp_path_factory):
    return snippet_results(selected(request, "test_runnable_snippet_runs"), tmp_path_factory.mktemp("doc-snippets"))


@pytest.fixture(scope="module")
def default_model_results(request, tmp_path_factory):
    return snippet_results(selected(request, "test_runnable_snippet_runs_on_the_default_model"),
                           tmp_path_factory.mktemp("doc-snippets-default"), swap_default=False)


def test_the_pages_have_runnable_snippets():
    pages = {s.page for s in snippets()}
    assert {"README.md", "docs/integrations.md", "docs/python-api.md"} <= pages, pages


def failure(snippet: Snippet, result: dict) -> str:
    return f"{snippet.name} failed:\n{result['error']}\noutput:\n{result['output'][-2000:]}"


@pytest.mark.parametrize("snippet", snippets(), ids=lambda s: s.name)
def test_runnable_snippet_runs(snippet, results):
    result = results[snippet.name]
    assert result["ok"], failure(snippet, result)


@pytest.mark.slow
@pytest.mark.parametrize("snippet", snippets(), ids=lambda s: s.name)
def test_runnable_snippet_runs_on_the_default_model(snippet, default_model_results):
    """The same snippets as written, on the real default model (slow: minutes per snippet on a CPU). The output
    is printed, for transcripts: ``pytest -m slow -s -k default_model tests/test_docs.py``."""
    result = default_model_results[snippet.name]
    print(f"\n--- {snippet.name}\n{result['output']}")
    assert result["ok"], failure(snippet, result)


if __name__ == "__main__":
    run_snippets(sys.argv[1], sys.argv[2], swap_default=sys.argv[3] == "tiny")
