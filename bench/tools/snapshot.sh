#!/usr/bin/env bash
# Unpacks a commit of Herald (default HEAD) into a folder and builds it, so the bench can measure a
# fixed revision while the work tree changes: npm run bench -- fanout --herald-dir <dir>
set -euo pipefail
commit="${1:-HEAD}"
dir="${2:-/tmp/herald-snap}"
root="$(cd "$(dirname "$0")/../.." && pwd)"
rm -rf "$dir"
mkdir -p "$dir"
git -C "$root" archive "$commit" | tar -x -C "$dir"
ln -s "$root/node_modules" "$dir/node_modules"
git -C "$root" rev-parse "$commit" > "$dir/COMMIT"
(cd "$dir" && node node_modules/typescript/bin/tsc -p tsconfig.build.json)
echo "$dir: $(cat "$dir/COMMIT")"
