"""nbgrader configuration for the course: the repository root is the course directory.

solutions/<lesson>/<lesson>.ipynb (instructor source) -> lessons/<lesson>/<lesson>.ipynb (released).
"""
c = get_config()  # noqa: F821 (injected by traitlets)

c.CourseDirectory.course_id = "minibn"
c.CourseDirectory.source_directory = "solutions"
c.CourseDirectory.release_directory = "lessons"
# Per-cell limit when grading or validating: graded cells are small by design (training runs sit in
# ungraded cells), so a hanging cell costs seconds, not the 30 s default.
c.ExecutePreprocessor.timeout = 60
c.Execute.timeout = 60
# A student who deletes a test cell gets it back instead of "needs manual grade".
c.OverwriteCells.add_missing_cells = True
