"""Viewing a job's output: the HTML preview, the page helpers, and the photo under a mask."""
