"""Evaluation: labeled datasets, scoring of a model or of a job's masks, and the HTML report."""
