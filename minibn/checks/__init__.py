"""The course's autograder: one module per lesson, shared by pytest and nbgrader.

- ``minibn.checks.normalize``: 01-normalize (per-channel statistics, the forward pass)
- ``minibn.checks.backward``: 02-backward (graph, closed-form and frozen-statistics backward)
- ``minibn.checks.inference``: 03-inference (running statistics, inference, population statistics, folding)
- ``minibn.checks.conv_torch``: 04-conv-torch (the autograd Function and the BatchNorm2d module)
- ``minibn.checks.figure1``: 05-figure1 (training step, percentile bands)
- ``minibn.checks.gpu_kernels``: 06-gpu-kernels (CUDA C kernels, on a GPU or the CPU executor)
- ``minibn.checks.convnet``: 07-convnet (conv-BN-ReLU block, evaluation, folding a network)
- ``minibn.checks.why_bn_works``: 08-why-bn-works (lp normalization, ICS, loss along the gradient)

Every check takes the learner's function, returns None on success and raises AssertionError
naming the quantity, the case, the worst index, expected vs received, the tolerance and a hint.
Each has a ``*_randomized`` twin that the graded (hidden) tests call with per-student cases.
"""
