#!/usr/bin/env bash
# The project's test command: checks the wire contract in proto/ (buf lint
# and buf breaking, scripts/check-proto.sh); sets up what the end-to-end
# tests need (a Python virtualenv with grpcio and stubs generated from
# proto/, and the Node packages of the example and of the browser test),
# inside the project, plus one system package, Debian's Chromium for the
# dashboard's browser test (apt-get, only when it is missing); checks that
# the client and worker libraries come without the CLI's dependencies
# (scripts/check-libs.sh); then builds the binaries the tests start and
# runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."

# First: it takes a second, and a broken contract fails fast.
./scripts/check-proto.sh

# Python: a virtualenv under target/, stubs generated from proto/ (never
# committed). Reused when present.
if [ ! -x target/py/bin/python ]; then
    mkdir -p target
    python3 -m venv target/py
fi
target/py/bin/pip install --quiet --disable-pip-version-check -r examples/python/requirements.txt
rm -rf target/py-gen && mkdir -p target/py-gen
target/py/bin/python -m grpc_tools.protoc -I proto \
    --python_out=target/py-gen --grpc_python_out=target/py-gen proto/sluice/v1/sluice.proto

# Node: the example's pinned packages, in examples/node/node_modules, and
# the dashboard's browser test's (playwright-core) in tests/browser.
(cd examples/node && npm ci --no-audit --no-fund --loglevel=error)
(cd tests/browser && npm ci --no-audit --no-fund --loglevel=error)

# The dashboard's browser test drives Debian's Chromium (its test fails
# without it): installed with apt when missing, as root or through sudo.
if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium
fi

./scripts/check-libs.sh
cargo build --workspace --bins
cargo test --workspace
