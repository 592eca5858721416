#!/usr/bin/env bash
# Fails when the repository drifts from what it should hold:
#   - go.mod or go.sum differ from what `go mod tidy` writes;
#   - a tracked file is larger than 1 MB (build output, binaries, data dumps
#     belong in bin/, dist/ or a release, never in git).
# `make check-repo` runs it; .ci/run runs that before the tests.
set -euo pipefail
cd "$(dirname "$0")/.."

GO=${GO:-go}
MAX_BYTES=${MAX_BYTES:-1048576}
status=0

if ! diff=$("$GO" mod tidy -diff 2>&1); then
	echo "go.mod/go.sum are not tidy; run \`go mod tidy\` and commit the result:" >&2
	echo "$diff" >&2
	status=1
fi

if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
	files() { git ls-files -z; }
else
	files() { find . -path ./.git -prune -o -type f -print0; }
fi
while IFS= read -r -d '' f; do
	[ -f "$f" ] || continue # deleted in the work tree, or a submodule
	size=$(stat -c %s "$f")
	if [ "$size" -gt "$MAX_BYTES" ]; then
		echo "tracked file over $MAX_BYTES bytes: $f ($size bytes)" >&2
		status=1
	fi
done < <(files)

exit "$status"
