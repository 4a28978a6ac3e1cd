#!/usr/bin/env bash
# Installs everything the app and its tests need: Debian's Chromium (for the browser tests), dicom3tools and PostgreSQL
# server (for the tests' throwaway clusters, tests/db/conftest.py), Orthanc with its DICOMweb plugin and dcmtk (for
# the PACS tests' own Orthanc, tests/pacs/conftest.py), when root; a virtual environment in .venv
# with the exact pins of requirements.lock, and this project (editable).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

apt_missing=()
command -v chromium >/dev/null 2>&1 || apt_missing+=(chromium)
# dciodvfy (David Clunie's DICOM validator) checks the SEG / SR exports in the tests.
command -v dciodvfy >/dev/null 2>&1 || apt_missing+=(dicom3tools)
# The PACS tests start their own Orthanc (loopback, free ports) and send it studies with dcmtk's storescu.
{ [ -x /usr/sbin/Orthanc ] || command -v Orthanc >/dev/null 2>&1; } || apt_missing+=(orthanc)
[ -e /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] || apt_missing+=(orthanc-dicomweb)
command -v storescu >/dev/null 2>&1 || apt_missing+=(dcmtk)
# Debian keeps initdb/pg_ctl off PATH, under /usr/lib/postgresql/<major>/bin.
if ! compgen -G '/usr/lib/postgresql/*/bin/pg_ctl' >/dev/null && ! command -v pg_ctl >/dev/null 2>&1; then
  apt_missing+=(postgresql)
fi
if [ ${#apt_missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${apt_missing[@]}" >/dev/null
    # Debian's orthanc package enables a system service on port 8042 with its own storage: nothing here uses it.
    if [[ " ${apt_missing[*]} " == *" orthanc "* ]] && [ -d /run/systemd/system ]; then
      systemctl disable --now orthanc.service >/dev/null 2>&1 || echo "note: could not disable the system Orthanc service" >&2
    fi
  else
    echo "note: ${apt_missing[*]} missing and this is not root: the browser / PostgreSQL / DICOM validation / PACS tests will be skipped" >&2
  fi
fi

stamp=.venv/.installed-$(sha256sum requirements.lock pyproject.toml | sha256sum | cut -c1-16)
if [ ! -f "$stamp" ]; then
  [ -x .venv/bin/python ] || "$PY" -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip==26.3
  .venv/bin/python -m pip install -q -r requirements.lock
  .venv/bin/python -m pip install -q --no-deps -e .
  rm -f .venv/.installed-*
  touch "$stamp"
fi
