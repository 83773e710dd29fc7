"""Storage that every product shares: where datasets live (`location`: fsspec URLs, atomic writes), reading the
input datasets (`inputs`), the mask dataset layout with its one writer and reader (`dataset`: mask files,
`_done/` markers, the manifest, the mask columns every mask dataset shares), reading ahead (`prefetch`) and
provenance (`provenance`)."""
