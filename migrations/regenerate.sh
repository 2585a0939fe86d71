#!/usr/bin/env bash
# Rewrite migrations/versions/0001_initial.py from the current models.
#
# Nothing has been released yet, so schema changes are folded into the one initial migration
# instead of stacking revisions. Once a release exists, add new revisions instead:
#   alembic -c migrations/alembic.ini revision --autogenerate -m "what changed"
# Afterwards run: pytest tests/unit/test_migrations.py
set -euo pipefail
cd "$(dirname "$0")/.."
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
rm -f migrations/versions/0001_initial.py
IDP_DATABASE_URL="sqlite:///$scratch/empty.sqlite3" \
    alembic -c migrations/alembic.ini revision --autogenerate --rev-id 0001 -m initial
echo "regenerated migrations/versions/0001_initial.py"
