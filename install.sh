#!/usr/bin/env bash
# Install medzoo with every dependency pinned by constraints.txt.
#   bash install.sh            # runtime only
#   bash install.sh test       # + test extras (pytest, MONAI as an oracle, ruff)
#   bash install.sh test,bench # + benchmark peers (TorchIO, dynamic-network-architectures, nnU-Net v2)
#   bash install.sh test,docs  # + the documentation site's tools (MkDocs, Material, mkdocstrings)
# torch is installed first, alone, so that no other package can make pip pick another build.
# GPU users: set MEDZOO_TORCH to the torch requirement to use instead of the CPU pin, e.g.
#   MEDZOO_TORCH="torch==2.13.0" PIP_INDEX_URL=https://download.pytorch.org/whl/cu128 bash install.sh
set -euo pipefail
cd "$(dirname "$0")"
torch_spec="${MEDZOO_TORCH:-torch==2.13.0}"
constraints="$(mktemp)"
trap 'rm -f "$constraints"' EXIT
grep -v '^torch==' constraints.txt > "$constraints"
echo "$torch_spec" >> "$constraints"
python3 -m pip install "$torch_spec"
extras="${1:-}"
target="."
if [ -n "$extras" ]; then target=".[${extras}]"; fi
python3 -m pip install -c "$constraints" -e "$target"
