"""Running jobs on Ray, for every product: connecting to a cluster (`cluster`), sizing the actor pool to what it
can host (`capacity`), and the one scheduling loop (`executor`)."""
