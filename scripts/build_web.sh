#!/usr/bin/env bash
# Builds the web page (client/web) into client/web/dist, only when something changed:
# `npm ci` when node_modules is missing or older than package-lock.json, `npm run build`
# when dist is missing or older than any of its sources.
set -euo pipefail
cd "$(dirname "$0")/../client/web"

if ! command -v npm >/dev/null 2>&1; then
    echo "build_web.sh: npm is missing; install Node.js 20.19+ (with npm) to build the page" >&2
    exit 1
fi
# Vite 8 needs Node ^20.19 or >=22.12; say so plainly rather than fail deep in a build.
if ! node -e 'const [a, b] = process.versions.node.split(".").map(Number);
process.exit((a === 20 && b >= 19) || (a === 22 && b >= 12) || a > 22 ? 0 : 1)'; then
    echo "build_web.sh: Node $(node --version) is too old; Vite 8 needs 20.19+ or 22.12+" >&2
    exit 1
fi

if [ ! -d node_modules ] || [ package-lock.json -nt node_modules ]; then
    npm ci --no-audit --no-fund
    touch node_modules
fi

stamp=dist/index.html
if [ ! -f "$stamp" ] || [ ! -f dist/demo.html ] ||
    [ -n "$(find src index.html demo.html package.json package-lock.json vite.config.* \
        -newer "$stamp" -print -quit)" ]; then
    npm run build
else
    echo "build_web.sh: client/web/dist is up to date"
fi
