"""Exporting a labeling job's output for viewing and for training: one module per format (`png`, `coco`, `sa1b`,
`webdataset`, `hf`), listed with what the command line needs to know of each in `FORMATS` (`formats`), the
segment annotations they share (`annotations`: RLE, box, area, filters) and the loop that streams the output's
rows through a format (`rows`). Importing this package imports no exporter.
"""

from .formats import FORMATS, Format, format_named

__all__ = ["FORMATS", "Format", "format_named"]
