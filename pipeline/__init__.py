"""Orchestration and I/O around the `diffseg` library, one subpackage per product (no tensor math here):

- `labeling`: the labeling job (input shards, storage, the Ray actor pool, the mask Parquet output and its
  provenance);
- `evaluation`: labeled datasets, scoring a model or a job's masks, the HTML report;
- `viewing`: the HTML preview of a job's output and the photo under a mask (shared with `jobs/export.py`);
- `export`: a job's output in the formats training frameworks read (COCO, SA-1B, WebDataset) and as PNG files;
- `clustering`: dataset-wide pseudo-classes: a job's segment descriptors clustered by faiss k-means, and semantic
  masks whose class ids mean the same in every image.
"""
