"""The labeling job: input shards, the Ray actor pool, the mask Parquet output and its provenance."""
