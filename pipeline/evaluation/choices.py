"""What the evaluation command line offers, importable without torch, so that `jobs/evaluate.py --help` and its flag
errors answer at once: the methods a model is scored with and the matching protocols."""

from __future__ import annotations

from diffseg.methods import METHODS

SCORED_METHODS = tuple(variant.name for method in METHODS.values() for variant in method.variants)
"""Methods a model can be scored with: each method's evaluation variants (`Method.variants`), among them K-Means-S,
which takes K = the classes present in each image's ground truth."""
PROTOCOLS = ("per-image", "dataset")
"""The matching protocols of `diffseg.metrics.PROTOCOLS`, which imports torch (a test holds the two equal)."""
