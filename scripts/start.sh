#!/usr/bin/env bash
# One command from a fresh clone to a running app: install, migrate, first admin, sample studies, serve.
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED=${CXR_REVIEW_SHARED_DIR:-$(cd .. && pwd)/shared}
export CXR_REVIEW_MODELS_DIR=${CXR_REVIEW_MODELS_DIR:-$SHARED/models}
# Folders whose images and labels a researcher may name on the Evaluation page: the sample data.
export CXR_REVIEW_DATASET_ROOTS=${CXR_REVIEW_DATASET_ROOTS:-$SHARED/data}

bash scripts/install.sh
.venv/bin/cxr-review db upgrade
.venv/bin/cxr-review init-admin
if [ -d "$SHARED/data" ]; then
  echo "importing the sample studies from $SHARED/data (already imported ones are recognised as duplicates)…"
  # Rejected files would make the exit code 1; the summary names each with its reason. The MONOCHROME1 variant
  # is a reader test file with the same SOP Instance UID as its MONOCHROME2 twin but other pixel data: the
  # importer refuses that as a conflict (rightly), so the sample set leaves it out.
  DICOMS=()
  for f in "$SHARED/data/dicom"/*.dcm; do
    case "$f" in *_mono1_variant.dcm) ;; *) DICOMS+=("$f") ;; esac
  done
  .venv/bin/cxr-review import "${DICOMS[@]}" "$SHARED/data/nih/images" --metadata "$SHARED/data/nih/labels.csv" \
    | .venv/bin/python scripts/summarise_import.py || true
  FOLLOWUP=$SHARED/data/covid_followup
  if [ -f "$FOLLOWUP/metadata.csv" ]; then
    echo "importing the frontal films of the COVID-19 follow-up patients (priors; laterals and CT left out)…"
    # Dated day zero (2020-01-01) + the CSV's offset in days: the intervals are real, the calendar dates are not.
    mapfile -t FILMS < <(.venv/bin/python scripts/followup_films.py "$FOLLOWUP/metadata.csv" "$FOLLOWUP/images")
    .venv/bin/cxr-review import "${FILMS[@]}" --metadata "$FOLLOWUP/metadata.csv" --issuer ieee8023-covid-chestxray \
      --day-zero 2020-01-01 | .venv/bin/python scripts/summarise_import.py || true
  fi
else
  echo "no sample data at $SHARED/data (set CXR_REVIEW_SHARED_DIR); starting with an empty worklist"
fi
exec .venv/bin/streamlit run asgi.py --server.address "${CXR_REVIEW_ADDRESS:-127.0.0.1}" --server.port "${CXR_REVIEW_PORT:-8501}"
