#!/usr/bin/env bash
# The wheels the offline GPU host lacks, for its Python 3.12 on manylinux x86_64: downloaded here,
# where there is a network, into one folder (default gpu-wheels/, ignored by git) that travels with the checkout to
# the host, where benchmarks/gpu_check.py installs them. Exactly the distributions diffusers needs beyond the host's
# own packages, at the versions installed here (`gpu_check.py --wheel-list`). Prints the folder's size and fails if
# it and the checkout together exceed 60 MiB (what may travel with one command to the host).
#
#     benchmarks/gpu_bundle.sh [FOLDER]        # PYTHON=... to use another environment than .venv
set -euo pipefail

cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
FOLDER=${1:-gpu-wheels}
LIMIT_MIB=60

mapfile -t wheels < <("$PYTHON" benchmarks/gpu_check.py --wheel-list)
echo "wheels: ${wheels[*]}"
rm -rf "$FOLDER"
mkdir -p "$FOLDER"
# --platform several times: any one of them may match; pure-Python wheels (py3-none-any) always do.
"$PYTHON" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    --implementation cp --python-version 3.12 \
    --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
    --platform any --dest "$FOLDER" "${wheels[@]}"

mib() { awk '{ total += $1 } END { printf "%.1f", total / 1048576 }'; }
bundle=$(find "$FOLDER" -type f -printf '%s\n' | mib)
# What travels: tracked files and untracked ones git does not ignore (those deleted here are gone).
checkout=$(git ls-files -z --cached --others --exclude-standard | xargs -0 stat -c '%s' 2>/dev/null | mib)
total=$(awk -v a="$bundle" -v b="$checkout" 'BEGIN { printf "%.1f", a + b }')
ls -1 "$FOLDER"
echo "$FOLDER: $(find "$FOLDER" -name '*.whl' | wc -l) wheels, $bundle MiB; checkout $checkout MiB; together $total MiB" \
    "(limit $LIMIT_MIB MiB)"
if awk -v t="$total" -v l="$LIMIT_MIB" 'BEGIN { exit !(t > l) }'; then
    echo "too large: the checkout and $FOLDER must stay under $LIMIT_MIB MiB together" >&2
    exit 1
fi
