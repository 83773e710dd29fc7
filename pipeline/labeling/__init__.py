"""The labeling job: planning an input's shards (and what changed since earlier runs), the model replicas that
label them (`worker`), and the driver that runs them on the shared executor."""
