#!/usr/bin/env bash
# Guards the wire contract: proto/ is a public API (clients in other
# languages are generated from it), so a change may add fields and RPCs but
# never renumber, retype, rename or remove one. Two checks, with buf pinned
# in scripts/buf/package-lock.json (the npm package ships the binary):
#   buf lint      the STANDARD rules (proto/buf.yaml);
#   buf breaking  the working tree's proto/ against the proto this change
#                 started from (the FILE rules: wire and generated code).
# SLUICE_PROTO_BASE=<commit-ish> compares with that instead (a release tag).
set -euo pipefail
cd "$(dirname "$0")/.."

buf=scripts/buf/node_modules/.bin/buf
pinned=$(node -p 'require("./scripts/buf/package.json").devDependencies["@bufbuild/buf"]')
if [ "$("$buf" --version 2>/dev/null || true)" != "$pinned" ]; then
    (cd scripts/buf && npm ci --no-audit --no-fund --loglevel=error)
fi

"$buf" lint proto || {
    echo "check-proto: buf lint found the problems above in proto/" >&2
    exit 1
}

# Which proto to compare with. On a branch: where it forked from main, so
# the whole branch is checked as it will land (an intermediate commit that
# broke something and a later one that undid it cancel out, as they should).
# On main, which is what CI clones, or on a detached HEAD: the first parent.
# Branches land on main as fast-forwards, so CI's HEAD^1 sees only the last
# commit; the branch's own run of this script (./scripts/test.sh) covered
# the rest, and CI checks the last step again on a fresh clone.
branch=$(git symbolic-ref --quiet --short HEAD || true)
if [ -n "${SLUICE_PROTO_BASE:-}" ]; then
    base=$SLUICE_PROTO_BASE
elif [ -n "$branch" ] && [ "$branch" != main ] && git rev-parse --verify --quiet main >/dev/null; then
    base=$(git merge-base HEAD main)
else
    base=HEAD^1
fi

if ! git rev-parse --verify --quiet "$base^{commit}" >/dev/null; then
    if [ "$(git rev-parse --is-shallow-repository)" = true ]; then
        # A shallow clone (CI may make one) lacks the parent: fetch it. If
        # that fails, fail: passing without comparing would hide a break.
        git fetch --quiet --deepen=1 || true
    elif [ "$base" = HEAD^1 ]; then
        echo "check-proto: HEAD is the first commit: no earlier proto to compare with"
        exit 0
    fi
    if ! git rev-parse --verify --quiet "$base^{commit}" >/dev/null; then
        echo "check-proto: cannot find $base to compare proto/ with (shallow clone?);" \
            "fetch more history or set SLUICE_PROTO_BASE" >&2
        exit 1
    fi
fi
if ! git cat-file -e "$base:proto/sluice" 2>/dev/null; then
    echo "check-proto: $base has no proto/sluice: nothing to compare with"
    exit 0
fi

# The base's proto/, taken out with git itself: the commit is known to be
# here now, whatever the clone's depth. A base from before proto/buf.yaml
# gets a bare one, or buf would look for one in the temp dir's parents.
against=$(mktemp -d)
trap 'rm -rf "$against"' EXIT
git archive "$base" proto | tar -x -C "$against"
[ -f "$against/proto/buf.yaml" ] || echo "version: v2" >"$against/proto/buf.yaml"
"$buf" breaking proto --against "$against/proto" || {
    echo "check-proto: proto/ breaks the wire contract of $(git rev-parse --short "$base") ($base):" \
        "add new fields and RPCs instead of changing or removing old ones" >&2
    exit 1
}
echo "check-proto: buf lint and buf breaking (against $(git rev-parse --short "$base")) passed"
