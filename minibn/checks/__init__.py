"""The course's autograder: one module per lesson, shared by pytest and nbgrader.

- ``minibn.checks.normalize``: lesson 01-normalize
- ``minibn.checks.backward``: lesson 02-backward

Every check takes the learner's function, returns None on success and raises AssertionError
naming the quantity, the case, the worst index, expected vs received, the tolerance and a hint.
"""
