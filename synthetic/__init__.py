"""Generated data with known answers, for the tests and the benchmarks: photos, self-attention with a planted
segmentation, and labeled datasets in the layouts the real ones unpack to. Importing it changes nothing else
(no environment, no fixtures); nothing in `diffseg`, `pipeline` or `jobs` uses it."""
