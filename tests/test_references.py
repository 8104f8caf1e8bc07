"""Every file reference in the repository resolves to a file that is in the repository.

Scanned: the files git tracks plus new files git does not ignore (``git ls-files --cached --others
--exclude-standard``), or, without git, every file outside ``.git``, ``.venv`` and the generated
folders below. In them:

- Python, CUDA, shell, TOML/YAML, Makefile: the whole text; notebooks: the source of every cell
  (outputs are stripped on commit and never scanned); Markdown: the whole text.
- **Notes outside the repository.** A mention of the internal ``shared/`` folder or of one of its
  note files (``NOTE_NAMES`` below, each followed by ``.md``) fails: users of the repository do not
  have them. What the project relies on is written down in ``docs/``.
- **Markdown links** ``[text](target)`` in Markdown files and notebook Markdown cells, unless the
  target is a URL (``scheme:``) or only an ``#anchor``; code spans and fenced code are skipped.
- **Repository paths** anywhere in the text: a token that starts with a top-level entry of the
  repository (``minibn/``, ``tests/``, ``docs/``, ``START.ipynb``, ...).

A target resolves if it exists relative to the referencing file's folder, the repository root, or
the root of a course folder the tests use (``COURSE_ROOTS``); ``#anchors`` and ``:line`` suffixes
are dropped first. The part of a path from its first placeholder component on (``<lesson>``,
``NN-name``, ``{name}``, ``*``, ``...``) is not checked: ``lessons/<lesson>/x.ipynb`` only needs
``lessons/``.

``GENERATED`` is the explicit allowlist of paths that do not exist in a checkout because a make
target or a tool creates them; keep it short, and say which command creates each entry.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
from fnmatch import fnmatchcase
from pathlib import Path, PurePosixPath

ROOT = Path(__file__).resolve().parents[1]
THIS = Path(__file__).resolve().relative_to(ROOT).as_posix()

# The internal notes that live outside the repository (matched as "<name>.md").
NOTE_NAMES = ("papers", "autograding", "environment", "gpu-kernels", "anchors")
NOTES_FOLDER = "shared"

# Folders (or course roots) a reference may be relative to besides its own folder and the root:
# the fixture course that the grading tests release and grade in a temporary copy.
COURSE_ROOTS = ("tests/fixtures/mini-course",)

# Generated paths: (glob over the posix path, what creates it). A reference matching one is fine.
GENERATED = (
    ("build/*", "`make reproduce`, `python -m minibn.experiments` (and its calibrate command), "
                "the browser tests' screenshots"),
    ("lessons/*/backups*", "`make lessons`: a learner's edited lesson moved aside"),
    ("lessons/00-mini*", "the grading tests: the fixture course's lessons, released into a temp copy"),
    ("*/figures*", "minibn.course.save_figure: a lesson's figures, next to its notebook"),
    ("gradebook.db", "`make grade`"),
    ("grades.csv", "`make grade`"),
    (".minibn-grading-secret", "`make grade` without MINIBN_GRADING_SECRET"),
    (".venv/*", "`make venv`"),
)

# Tokens that look like repository paths but are not references: (token, where and why).
NOT_PATHS = {
    "minibn/torch": "benchmarks/bench_module.py prints the time ratio minibn/torch",
}

CODE_SUFFIXES = {".py", ".cu", ".cuh", ".h", ".sh", ".toml", ".yml", ".yaml", ".cfg", ".txt"}
CODE_NAMES = {"Makefile"}
SKIP_WALK = {".git", ".venv", "build", "__pycache__", ".pytest_cache", ".hypothesis",
             ".ipynb_checkpoints"}

NOTE_RE = re.compile(r"(?<![\w-])(?:%s)\.md\b" % "|".join(re.escape(n) for n in NOTE_NAMES))
FOLDER_RE = re.compile(r"(?<![\w.-])%s/" % re.escape(NOTES_FOLDER))
LINK_RE = re.compile(r"!?\[[^\]\n]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE_RE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.S | re.M)
CODE_SPAN_RE = re.compile(r"`[^`\n]*`")
SCHEME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
PLACEHOLDER_RE = re.compile(r"[<>*{}$…\[\]]|\.\.\.|^NN(?:-|$)")
PATH_CHARS = r"[A-Za-z0-9_.\-/<>*{}$…]"


def repo_files():
    """Posix paths (relative to ROOT) of the files the repository holds."""
    try:
        out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
                             cwd=ROOT, capture_output=True, check=True, timeout=30).stdout
        names = [n for n in out.decode().split("\0") if n]
    except (OSError, subprocess.SubprocessError):
        names = []
        for folder, dirs, files in os.walk(ROOT):
            dirs[:] = [d for d in dirs if d not in SKIP_WALK and not d.endswith(".egg-info")]
            names += [Path(folder, f).relative_to(ROOT).as_posix() for f in files]
    return sorted(n for n in set(names) if (ROOT / n).is_file())  # a deleted, still-tracked file is gone


FILES = repo_files()
FILE_SET = set(FILES)
DIR_SET = {str(p) for f in FILES for p in PurePosixPath(f).parents if str(p) != "."}
TOP_DIRS = sorted({f.split("/")[0] for f in FILES if "/" in f})
TOP_FILES = sorted({f for f in FILES if "/" not in f})
# A token starting with a top-level folder ("minibn/...") or naming a top-level file.
PATH_RE = re.compile(
    r"(?<![\w./\-])((?:%s)/%s*|(?:%s)(?![\w.\-]))" % (
        "|".join(re.escape(d) for d in TOP_DIRS), PATH_CHARS,
        "|".join(re.escape(f) for f in TOP_FILES)))


def texts(rel):
    """(first line, text, is_markdown, label) for each scanned piece of the file ``rel``.

    A notebook gives one piece per cell (its source; the label names the cell), found at the line
    of the .ipynb file where that source starts, so that messages point into the file.
    """
    path = ROOT / rel
    suffix = PurePosixPath(rel).suffix
    if suffix == ".ipynb":
        raw = path.read_text(encoding="utf-8")
        lines = raw.splitlines()
        pieces, cursor = [], 0
        for index, cell in enumerate(json.loads(raw).get("cells", [])):
            source = cell.get("source", "")
            source = "".join(source) if isinstance(source, list) else source
            needle = json.dumps(source.split("\n", 1)[0], ensure_ascii=False)[1:-1][:60]
            at = cursor
            while at < len(lines) and needle and needle not in lines[at]:
                at += 1
            cursor = at if at < len(lines) else cursor
            pieces.append((cursor, source, cell.get("cell_type") == "markdown", f" (cell {index})"))
        return pieces
    if suffix == ".md":
        return [(0, path.read_text(encoding="utf-8"), True, "")]
    if suffix in CODE_SUFFIXES or PurePosixPath(rel).name in CODE_NAMES or rel.startswith(".ci/"):
        return [(0, path.read_text(encoding="utf-8"), False, "")]
    return []


def _blank(match):
    return re.sub(r"[^\n]", " ", match.group(0))


def is_generated(target):
    target = target.rstrip("/")
    return any(fnmatchcase(target, pattern) or fnmatchcase(target + "/", pattern)
               for pattern, _ in GENERATED)


def resolves(target, rel):
    """Whether ``target`` (posix, no anchor) names a file or folder of the repository."""
    target = target.rstrip("/")
    if not target or target == ".":
        return True
    bases = [PurePosixPath(rel).parent, PurePosixPath("."), *map(PurePosixPath, COURSE_ROOTS)]
    for base in bases:
        parts = []
        for part in (base / target).parts:
            if part == "..":
                if not parts:
                    break
                parts.pop()
            elif part != ".":
                parts.append(part)
        else:
            joined = "/".join(parts)
            if joined in FILE_SET or joined in DIR_SET or is_generated(joined):
                return True
    return is_generated(target)


def checked_part(target):
    """``target`` without an #anchor, a :line suffix, trailing punctuation, and placeholder parts."""
    target = target.split("#", 1)[0]
    target = re.sub(r":\d+(?::\d+)?$", "", target)
    target = target.rstrip(".,;:")
    kept = []
    for part in target.split("/"):
        if PLACEHOLDER_RE.search(part):
            break
        kept.append(part)
    else:
        return target
    return "/".join(kept) + "/"


def scan(rel, offset, text, markdown, label=""):
    """Messages for the bad references in ``text``, a piece of the file ``rel`` starting at line
    ``offset + 1``: each names the file, the line, what is wrong and the missing target."""
    found = []

    def where(pos):
        return f"{rel}:{offset + text.count(chr(10), 0, pos) + 1}{label}"

    for rx, what in ((NOTE_RE, "an internal note that is not in the repository"),
                     (FOLDER_RE, "the internal notes folder, which is not in the repository")):
        for m in rx.finditer(text):
            found.append(f"{where(m.start())}: mentions {m.group(0)!r}, {what}; "
                         "write what is needed into docs/ and point there")
    if markdown:
        prose = CODE_SPAN_RE.sub(_blank, FENCE_RE.sub(_blank, text))
        for m in LINK_RE.finditer(prose):
            target = m.group(1)
            if SCHEME_RE.match(target) or target.startswith("#"):
                continue
            if not resolves(checked_part(target), rel):
                found.append(f"{where(m.start())}: Markdown link to {target!r}: no such file")
    for m in PATH_RE.finditer(text):
        target = m.group(1)
        if target not in NOT_PATHS and not resolves(checked_part(target), rel):
            found.append(f"{where(m.start())}: path {target!r}: no such file or folder")
    return found


def problems(rel):
    """Every bad reference in the repository file ``rel``."""
    return [p for piece in texts(rel) for p in scan(rel, *piece)]


def test_references_resolve():
    # This file is left out: its own tests spell out bad references on purpose.
    found = [p for rel in FILES if rel != THIS for p in problems(rel)]
    assert not found, (f"{len(found)} reference(s) to files not in the repository:\n  "
                       + "\n  ".join(found))


def test_the_scan_sees_what_it_must():
    """The scanner itself: it finds each kind of bad reference and accepts the good ones."""
    assert "minibn" in TOP_DIRS and "README.md" in TOP_FILES and THIS in FILE_SET
    assert resolves("minibn/experiments", "docs/x.md")
    assert resolves("../../docs/", "solutions/a/a.ipynb")
    assert resolves(checked_part("lessons/<lesson>/backups/x.ipynb"), "README.md")
    assert resolves(checked_part("solutions/NN-name/NN-name.ipynb#top"), "README.md")
    assert resolves("build/reproduce/report.md", "Makefile")
    assert not resolves("minibn/no_such_module.py", "README.md")
    assert not resolves("../docs/missing.md", "docs/x.md")
    assert NOTE_RE.search("see " + NOTE_NAMES[0] + ".md, E5")
    assert FOLDER_RE.search("(" + NOTES_FOLDER + "/x)")
    assert not FOLDER_RE.search("__" + NOTES_FOLDER + "__ memory") and not NOTE_RE.search("README.md")
    links = LINK_RE.finditer("[a](../b.md#c) and ![img](x.png \"t\")")
    assert [m.group(1) for m in links] == ["../b.md#c", "x.png"]
    assert [m.group(1) for m in PATH_RE.finditer("in minibn/nn.py, `tests/` and (README.md)")] == [
        "minibn/nn.py", "tests/", "README.md"]


def test_messages_name_the_file_line_and_target():
    text = "intro\n\nsee [the notes](../missing.md#top) and `[code](x)`\nthen minibn/nope.py\n"
    found = scan("docs/x.md", 10, text, True)
    assert len(found) == 2, found
    assert found[0].startswith("docs/x.md:13: Markdown link to '../missing.md#top'")
    assert found[1].startswith("docs/x.md:14: path 'minibn/nope.py'")
    note = scan("a.py", 0, "# see " + NOTE_NAMES[1] + ".md", False)
    assert len(note) == 1 and note[0].startswith("a.py:1: mentions")
