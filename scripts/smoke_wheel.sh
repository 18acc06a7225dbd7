#!/usr/bin/env bash
# Build the sdist and wheel, install the wheel (not editable) in a fresh virtual environment, and
# use it from a folder outside the checkout: built-in specs, tasks init, a tiny train, predict.
# What this catches and the test suite cannot: files the package reads that the wheel lacks, and
# paths that only resolve next to a source tree.
#
#   bash scripts/smoke_wheel.sh            # data root: $NLP_MTL_DATA_ROOT, else ../shared/data
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
data_root="${NLP_MTL_DATA_ROOT:-$repo/../shared/data}"
if [[ ! -d "$data_root/conll2003" ]]; then
    echo "smoke_wheel: no CoNLL-2003 under $data_root; set NLP_MTL_DATA_ROOT" >&2
    exit 1
fi
data_root="$(cd "$data_root" && pwd)"
work="$(mktemp -d "${TMPDIR:-/tmp}/nlp-mtl-wheel.XXXXXX")"
trap 'rm -rf "$work"' EXIT
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PIP_DISABLE_PIP_VERSION_CHECK=1
# Nothing of the checkout may leak into the installed package's view.
unset PYTHONPATH NLP_MTL_DATA_ROOT

step() { printf '\n== smoke_wheel: %s\n' "$*"; }
fail() { echo "smoke_wheel: FAILED: $*" >&2; exit 1; }

step "build sdist and wheel (the wheel is built from the sdist)"
python -m build --outdir "$work/dist" "$repo" > "$work/build.log" 2>&1 || { tail -40 "$work/build.log"; fail "python -m build"; }
wheel="$(ls "$work"/dist/*.whl)"
echo "built $(basename "$wheel") and $(basename "$(ls "$work"/dist/*.tar.gz)")"

step "install the wheel in a fresh venv"
python -m venv "$work/venv"
"$work/venv/bin/python" -m pip install -c "$repo/constraints.txt" "$wheel" > "$work/install.log" 2>&1 \
    || { tail -40 "$work/install.log"; fail "pip install of the wheel"; }
PATH="$work/venv/bin:$PATH"
hash -r
mkdir "$work/outside"
cd "$work/outside"
installed="$(python -c 'import nlp_mtl, os; print(os.path.dirname(nlp_mtl.__file__))')"
[[ "$installed" == "$work/venv/"* ]] || fail "nlp_mtl imported from $installed, not from the wheel"
echo "nlp_mtl from $installed"

step "nlp-mtl tasks list"
nlp-mtl tasks list | tee "$work/list.txt"
for name in conll2003_ner conll2003_pos conll2003_chunk trec_coarse trec_fine sst2; do
    grep -q "^$name .*$work/venv/.*/nlp_mtl/builtin_tasks/$name.yaml$" "$work/list.txt" || fail "tasks list lacks $name"
done

step "nlp-mtl tasks validate (built-in names)"
nlp-mtl tasks validate conll2003_ner trec_coarse --data-root "$data_root" | tee "$work/validate.txt"
grep -q "task 'conll2003_ner' (token_classification), 9 labels" "$work/validate.txt" || fail "conll2003_ner counts"
grep -q "train      examples 14,041" "$work/validate.txt" || fail "conll2003_ner train count"

step "nlp-mtl tasks init + validate"
nlp-mtl tasks init "$data_root/trec/train_5500.label" --out trec.yaml --data-root "$data_root"
nlp-mtl tasks validate trec.yaml --data-root "$data_root" | tee "$work/init.txt"
grep -q "task 'trec' (sequence_classification), 50 labels" "$work/init.txt" || fail "tasks init on TREC"

step "nlp-mtl train (embedded backbone, a few steps on a slice)"
# The checkout's main config, as a user would pass any config file; the run is cut down to seconds.
nlp-mtl --quiet train "$repo/configs/conll_trec_sst2.yaml" --output-dir run --data-root "$data_root" \
    --set training.steps=4 --set training.batch_size=8 --set training.evaluations=1 \
    --set training.log_with=none --set "data.limit={train: 64, validation: 32, test: 32}"
[[ -f run/reports/summary.test.json ]] || fail "no test summary in the run"

step "nlp-mtl predict"
nlp-mtl --quiet predict run --text "John lives in Berlin." --text "What is the capital of Peru?" | tee "$work/predict.jsonl"
python - "$work/predict.jsonl" <<'EOF'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
assert len(rows) == 2, rows
for row in rows:
    assert set(row["tasks"]) == {"conll2003_ner", "trec_coarse", "sst2"}, row
    assert "entities" in row["tasks"]["conll2003_ner"] and "label" in row["tasks"]["trec_coarse"], row
EOF

step "OK: the wheel installs and works outside the checkout"
