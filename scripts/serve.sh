#!/usr/bin/env bash
# Sets up what is missing, then serves the chat page and Socket.IO on one port.
# With no OPENAI_API_KEY / OPENAI_BASE_URL in the environment it runs the demo model.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh requirements.txt
if [ -f .env ]; then
    set -a
    . ./.env
    set +a
fi
if [ -x scripts/build_web.sh ]; then
    scripts/build_web.sh
fi
echo "Serving on http://${HOST:-127.0.0.1}:${PORT:-5000}"
exec .venv/bin/gunicorn -c deploy/gunicorn.conf.py wsgi:app
