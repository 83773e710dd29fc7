"""Orchestration and I/O around the `diffseg` library: sharding, Ray actors, storage, provenance."""
