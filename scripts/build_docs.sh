#!/usr/bin/env bash
# Build the documentation site with `mkdocs build --strict`: a broken link, a missing page or a
# stale generated reference fails the build. Installs nothing: run it in an environment that has
# the package and the docs tools (pip install -e ".[docs]").
#
#   scripts/build_docs.sh            # builds into a new temporary folder and prints its path
#   scripts/build_docs.sh DIR        # builds into DIR
set -euo pipefail
cd "$(dirname "$0")/.."
site_dir="${1:-$(mktemp -d)/site}"
# The key references in docs/reference/ are generated from the config schema.
python -m nlp_mtl.docs_reference --check
python -m mkdocs build --strict --site-dir "$site_dir"
echo "docs built in $site_dir"
