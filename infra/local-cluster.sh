#!/usr/bin/env bash
exec python3 "$(dirname "$0")/local_cluster.py" "$@"  # see local_cluster.py
