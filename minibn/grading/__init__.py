"""The course's grading tools, for instructors.

- ``python -m minibn.grading.release`` (``make lessons``): solutions/ -> lessons/ through nbgrader.
- ``python -m minibn.grading grade`` (``make grade``): autograde every submission, re-grade it out
  of the kernel, write feedback and ``grades.csv`` (see ``minibn.grading.grade``).
"""
