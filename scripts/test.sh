#!/usr/bin/env bash
# The whole test suite (unit, page logic, Alembic, browser end-to-end). Installs what is missing first.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export CXR_REVIEW_SHARED_DIR=${CXR_REVIEW_SHARED_DIR:-$(cd .. && pwd)/shared}
export CXR_REVIEW_MODELS_DIR=${CXR_REVIEW_MODELS_DIR:-$CXR_REVIEW_SHARED_DIR/models}
exec .venv/bin/python -m pytest "$@"
