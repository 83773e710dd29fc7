"""What every product shows: self-contained HTML pages (`pages`: the preview's, the evaluation report's) and the
photo under a mask (`photos`: the preview, the PNG export)."""
