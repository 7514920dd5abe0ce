#!/usr/bin/env bash
# Creates (once) the separate venv in which TF Encrypted 0.9.1 runs: it imports only on TensorFlow 2.9.1,
# which needs Python 3.10.  Cached outside the source tree; prints the venv's python on success.
set -euo pipefail
VENV="${TFPPML_TFE_VENV:-$HOME/.cache/tfppml/venv-tfe-0.9.1}"
if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "import tf_encrypted" >/dev/null 2>&1; then
  echo "$VENV/bin/python"; exit 0
fi
PY310="${TFPPML_PY310:-}"
if [ -z "$PY310" ]; then
  if command -v pyenv >/dev/null 2>&1 && pyenv prefix 3.10 >/dev/null 2>&1; then
    PY310="$(pyenv prefix 3.10)/bin/python3.10"
  elif command -v python3.10 >/dev/null 2>&1; then
    PY310="$(command -v python3.10)"
  else
    echo "make_tfe_venv: no Python 3.10 found (pyenv 3.10 or python3.10 on PATH); TF Encrypted needs it" >&2
    exit 3
  fi
fi
mkdir -p "$(dirname "$VENV")"
"$PY310" -m venv "$VENV" >&2
"$VENV/bin/pip" install --disable-pip-version-check -q \
  tensorflow==2.9.1 tf-encrypted==0.9.1 tf2onnx==1.12.0 onnx==1.12.0 numpy==1.22.4 "protobuf<3.20" >&2
"$VENV/bin/python" -c "import tf_encrypted" >&2
echo "$VENV/bin/python"
