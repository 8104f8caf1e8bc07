"""Release the lessons: ``solutions/<a>/<a>.ipynb`` -> ``lessons/<a>/<a>.ipynb`` through nbgrader.

``python -m minibn.grading.release`` (what ``make lessons`` runs) regenerates every lesson from
its solution notebook with ``nbgrader generate_assignment`` in a throwaway course folder (no
gradebook or other stray files are left in the repository), strips outputs, and writes the
lessons byte-for-byte the same on every run.

A learner's work is never overwritten: ``lessons/.generated.json`` records the sha256 of every
file last generated, and a lesson file that differs from that record (someone edited it) is
moved to ``lessons/<a>/backups/<name>-<timestamp>.ipynb`` first, with a warning. Naming lessons
(``python -m minibn.grading.release 01-normalize``, ``make lessons LESSON=01-normalize``) refreshes
only those, so starting one lesson over leaves the others as the learner left them.

``--check`` regenerates into memory only and exits 1 naming every lesson file that differs from
what the solutions generate (the sync test runs it).
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from minibn.grading import nbgrader_cli
from minibn.grading import notebooks as nbs

MANIFEST = ".generated.json"
BACKUPS = "backups"
_IGNORE = shutil.ignore_patterns(".ipynb_checkpoints", "__pycache__", BACKUPS, "*.pyc")


def generate(course_root):
    """Generate every lesson; returns ``{path relative to lessons/: bytes}``, notebooks normalized."""
    course_root = Path(course_root)
    source = course_root / "solutions"
    if not nbs.notebooks_under(source):
        return {}
    with tempfile.TemporaryDirectory(prefix="minibn-release-") as tmp:
        tmp = Path(tmp)
        shutil.copy(course_root / "nbgrader_config.py", tmp / "nbgrader_config.py")
        shutil.copytree(source, tmp / "solutions", ignore=_IGNORE)
        nbgrader_cli.run(["generate_assignment", "*", "--force"], tmp)
        released = tmp / "lessons"
        files = {}
        for path in sorted(p for p in released.rglob("*") if p.is_file()):
            rel = path.relative_to(released).as_posix()
            if path.suffix == ".ipynb":
                files[rel] = nbs.dumps(nbs.strip(nbs.read(path))).encode()
            else:
                files[rel] = path.read_bytes()
        return files


def drift(course_root, generated=None):
    """Lesson files (relative to lessons/) that differ from what the solutions generate."""
    lessons = Path(course_root) / "lessons"
    generated = generate(course_root) if generated is None else generated
    drifted = [rel for rel, data in generated.items()
               if not (lessons / rel).is_file() or (lessons / rel).read_bytes() != data]
    hashes = {rel: nbs.sha256(data) for rel, data in generated.items()}
    if _manifest_text(hashes) != _read(lessons / MANIFEST):
        drifted.append(MANIFEST)
    return drifted


def release(course_root, only=(), log=print, warn=None):
    """Write the generated lessons, backing up any lesson file edited since the last release.

    ``only``: lesson names (``01-normalize``) to refresh; empty means every lesson. ``log(text)``
    gets progress lines and ``warn(text)`` (default: ``log``) the backup warnings.
    Returns the list of backups made (paths).
    """
    lessons = Path(course_root) / "lessons"
    generated = generate(course_root)
    manifest = _load_manifest(lessons / MANIFEST)
    unknown = set(only) - {rel.split("/")[0] for rel in generated}
    if unknown:
        raise ValueError(f"no such lesson: {', '.join(sorted(unknown))} (lessons: "
                         f"{', '.join(sorted({rel.split('/')[0] for rel in generated}))})")
    selected = {rel: data for rel, data in generated.items() if not only or rel.split("/")[0] in only}
    backups = []
    for rel, data in selected.items():
        target = lessons / rel
        if target.is_file():
            current = target.read_bytes()
            if current != data and nbs.sha256(current) != manifest.get(rel):
                backups.append(_backup(target))
                (warn or log)(f"WARNING: {target} was edited since it was generated; your version is saved "
                              f"as {backups[-1]}")
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.is_file() or target.read_bytes() != data:
            target.write_bytes(data)
            log(f"wrote {target}")
    # Lessons not refreshed keep their old record, so their edits are still recognised later.
    hashes = {rel: manifest[rel] for rel in generated if rel in manifest and rel not in selected}
    hashes.update({rel: nbs.sha256(data) for rel, data in selected.items()})
    (lessons / MANIFEST).write_text(_manifest_text(hashes))
    log(f"{len(selected)} lesson file(s) up to date in {lessons}")
    return backups


def _backup(path):
    stamp = time.strftime("%Y%m%d-%H%M%S")
    folder = path.parent / BACKUPS
    folder.mkdir(exist_ok=True)
    dest = folder / f"{path.stem}-{stamp}{path.suffix}"
    n = 1
    while dest.exists():
        dest = folder / f"{path.stem}-{stamp}-{n}{path.suffix}"
        n += 1
    shutil.move(str(path), dest)
    return dest


def _manifest_text(hashes):
    return json.dumps({"generated_by": "python -m minibn.grading.release", "sha256": hashes},
                      indent=1, sort_keys=True) + "\n"


def _load_manifest(path):
    try:
        return json.loads(path.read_text())["sha256"]
    except (OSError, ValueError, KeyError):
        return {}


def _read(path):
    try:
        return path.read_text()
    except OSError:
        return None


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m minibn.grading.release", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--course", default=".", help="course directory (holds nbgrader_config.py)")
    parser.add_argument("lessons", nargs="*", metavar="LESSON",
                        help="refresh only these lessons (e.g. 01-normalize); default: all")
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 if lessons/ differs from the solutions")
    args = parser.parse_args(argv)
    course = Path(args.course).resolve()
    if not (course / "nbgrader_config.py").is_file():
        parser.error(f"{course} has no nbgrader_config.py; pass --course")
    if args.check:
        drifted = drift(course)
        if drifted:
            print("lessons/ is out of date with solutions/ (run `make lessons`): "
                  + ", ".join(f"lessons/{d}" for d in drifted), file=sys.stderr)
            return 1
        print("lessons/ matches solutions/")
        return 0
    try:
        release(course, only=args.lessons, warn=lambda message: print(message, file=sys.stderr))
    except ValueError as err:
        parser.error(str(err))
    return 0


if __name__ == "__main__":
    sys.exit(main())
