"""Similarity between submissions, and against minibn's reference and the instructor's solution,
for a person to review (never a score change).

Winnowing (Schleimer, Wilkerson and Aiken 2003, the algorithm behind MOSS): a learner's code is
reduced to Python tokens with every name, string and number replaced by its kind (so renaming
variables or changing constants does not hide a copy, and comments and layout do not count),
hashed in overlapping runs of ``K`` tokens, and the smallest hash of every window of ``W`` runs
is kept. Two codes' similarity is the share of the smaller one's kept hashes found in the other.
Hashes of the released lesson's own solution cells (the stub's ``def`` line and docstring, which
everyone starts from) are removed first.

``report(entries, threshold)`` writes one row per submission: the most similar other submission
or source, the similarity, and whether it reaches the instructor's threshold.
"""
from __future__ import annotations

import csv
import hashlib
import io
import keyword
import tokenize

K = 10  # tokens per hashed run
W = 6  # runs per window


def tokens(source):
    out = []
    try:
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            if tok.type == tokenize.NAME:
                out.append(tok.string if keyword.iskeyword(tok.string) else "V")
            elif tok.type == tokenize.NUMBER:
                out.append("N")
            elif tok.type == tokenize.STRING:
                out.append("S")
            elif tok.type == tokenize.OP:
                out.append(tok.string)
    except (tokenize.TokenError, IndentationError, SyntaxError):
        pass
    return out


def fingerprints(source, k=K, w=W):
    toks = tokens(source)
    hashes = [int.from_bytes(hashlib.blake2b(" ".join(toks[i:i + k]).encode(), digest_size=8).digest(), "big")
              for i in range(max(0, len(toks) - k + 1))]
    if len(hashes) <= w:
        return set(hashes)
    return {min(hashes[i:i + w]) for i in range(len(hashes) - w + 1)}


def similarity(a, b):
    if not a or not b:
        return 0.0
    return len(a & b) / min(len(a), len(b))


def compare(entries, sources=(), boilerplate=""):
    """``entries``: ``{key: code}`` (one per submission); ``sources``: ``{name: code}`` (minibn's
    reference, the instructor's solution). Returns ``{key: (most similar, similarity)}``."""
    common = fingerprints(boilerplate)
    prints = {key: fingerprints(code) - common for key, code in entries.items()}
    others = {f"source: {name}": fingerprints(code) - common for name, code in dict(sources).items()}
    best = {}
    for key, mine in prints.items():
        candidates = {**{f"submission: {k}": v for k, v in prints.items() if k != key}, **others}
        match = max(candidates.items(), key=lambda kv: similarity(mine, kv[1]), default=(None, set()))
        best[key] = (match[0], similarity(mine, match[1]) if match[0] else 0.0)
    return best


def write_report(path, best, threshold):
    """A CSV of ``best`` (from ``compare``): student, assignment, most_similar, similarity, review."""
    rows = sorted(best.items(), key=lambda kv: -kv[1][1])
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["student", "assignment", "most_similar", "similarity", "review"])
        for (student, assignment), (other, score) in rows:
            writer.writerow([student, assignment, other or "", f"{score:.2f}", "yes" if score >= threshold else "no"])
    return sum(1 for _, (_, score) in rows if score >= threshold)
