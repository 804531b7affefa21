#!/usr/bin/env bash
# The client and worker libraries must not drag the command-line tools'
# dependencies into a program that embeds them: with default features off,
# neither may depend on clap, indicatif, hdrhistogram, serde_json,
# tracing-subscriber or reqwest (sluice-worker --http-post's client, behind
# the worker's `http` feature). `cargo tree` reads the lock file (fetching crate metadata if needed);
# nothing is built.
set -euo pipefail
cd "$(dirname "$0")/.."
for lib in sluice-client sluice-worker; do
    # A failing `cargo tree` stops the script (set -e): no vacuous pass.
    tree=$(cargo tree -p "$lib" --no-default-features -e normal --prefix none)
    found=$(printf '%s\n' "$tree" | awk '{print $1}' \
        | grep -xE 'clap|indicatif|hdrhistogram|serde_json|tracing-subscriber|reqwest' | sort -u || true)
    if [ -n "$found" ]; then
        echo "check-libs: $lib without its cli feature still depends on: $found" >&2
        exit 1
    fi
done
echo "check-libs: sluice-client and sluice-worker build as libraries without the CLI's dependencies"
