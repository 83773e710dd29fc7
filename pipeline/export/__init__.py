"""Exporting a labeling job's output for viewing and for training: one module per format (`png`, `coco`, `sa1b`,
`webdataset`), the segment annotations they share (`annotations`: RLE, box, area, filters) and the loop that
streams the output's rows through a format (`rows`).
"""
