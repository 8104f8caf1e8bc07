"""``python -m minibn.grading grade``: grade every submission of the course (see ``grade.py``)."""
import argparse
import sys
from pathlib import Path

from minibn.grading import grade as grading
from minibn.grading import sandbox


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m minibn.grading")
    sub = parser.add_subparsers(dest="command", required=True)
    g = sub.add_parser("grade", help="autograde submitted/<student>/<lesson>/, re-grade, feedback, grades.csv",
                       description=grading.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g.add_argument("--course", default=".", help="course directory (holds nbgrader_config.py)")
    g.add_argument("--assignment", action="append", help="only this lesson (repeatable)")
    g.add_argument("--student", action="append", help="only this student (repeatable)")
    g.add_argument("--workers", type=int, default=None, help="parallel graders (default: CPU count + 1)")
    g.add_argument("--timeout", type=float, default=60.0, help="seconds per cell (default 60)")
    g.add_argument("--full", action="store_true",
                   help="run lessons at full size (default: MINIBN_FAST=1, graded cells are the same)")
    g.add_argument("--csv", default=None, help="where to write grades.csv (default: <course>/grades.csv)")
    g.add_argument("--unsafe-no-sandbox", action="store_true",
                   help="grade without the bubblewrap sandbox: for trusted self-study only (every row says so)")
    g.add_argument("--similarity-threshold", type=float, default=0.8,
                   help="similarity (0-1) at which similarity.csv marks a submission for review (default 0.8)")
    g.add_argument("--self-check", action="append", default=[], metavar="STUDENT",
                   help="this student's submission is the instructor's own notebook: do not zero exact "
                        "copies of the solution (repeatable)")
    args = parser.parse_args(argv)
    course = Path(args.course).resolve()
    if not (course / "nbgrader_config.py").is_file():
        parser.error(f"{course} has no nbgrader_config.py; pass --course")
    try:
        grading.grade(course, assignments=args.assignment, students=args.student, workers=args.workers,
                      timeout=args.timeout, fast=not args.full, csv_path=args.csv,
                      unsafe_no_sandbox=args.unsafe_no_sandbox, self_check_students=args.self_check,
                      similarity_threshold=args.similarity_threshold)
    except sandbox.SandboxUnavailable as err:
        print(f"minibn.grading: refusing to grade without a sandbox: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
