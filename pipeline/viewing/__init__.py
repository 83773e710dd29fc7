"""Viewing a job's output: the HTML preview (`preview`)."""
