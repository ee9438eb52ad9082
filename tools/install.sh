#!/usr/bin/env bash
# Set up everything distillw2v2 needs; safe to run again (it skips what is already there).
#   - a virtualenv in .venv (unless one is active already: $VIRTUAL_ENV or $CONDA_PREFIX),
#   - torch==2.13.0 (CPU wheel) first, when no torch is importable (an existing torch is kept),
#   - the package (editable) with its extras (default: dev,onnx,hf),
#   - the Debian tools the demo corpus and the tests use, when running as root; otherwise it prints
#     the exact apt-get command to run.
# Usage: tools/install.sh [--extras dev,onnx,hf] [--no-apt]
set -euo pipefail
top=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
extras=dev,onnx,hf
do_apt=true
while [ $# -gt 0 ]; do
  case "$1" in
    --extras) extras=$2; shift 2 ;;
    --no-apt) do_apt=false; shift ;;
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
    *) echo "$0: unknown option $1" >&2; exit 2 ;;
  esac
done
log() { echo "[install $(date +%H:%M:%S)] $*" >&2; }

# ---- Debian tools -----------------------------------------------------------------------------
# espeak-ng, festival (+ English voices) and sox make the demo corpus; opus-tools writes the
# GigaSpeech layout; sctk (sclite) and pocketsphinx-testdata (real LibriVox clips) are test oracles.
apt_pkgs=(espeak-ng festival festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts sox libsox-fmt-all
          opus-tools sctk pocketsphinx-testdata)
missing=()
for p in "${apt_pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if $do_apt && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    log "installing Debian packages: ${missing[*]}"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    log "missing Debian packages (needed for the demo corpus and some tests); please run:"
    echo "    sudo apt-get install ${missing[*]}" >&2
  fi
fi

# ---- Python environment -----------------------------------------------------------------------
if [ -n "${VIRTUAL_ENV:-}" ] || [ -n "${CONDA_PREFIX:-}" ]; then
  py=$(command -v python)
  log "using the active environment: $py"
else
  if [ ! -x "$top/.venv/bin/python" ]; then
    log "creating $top/.venv"
    python3 -m venv "$top/.venv"
  fi
  py="$top/.venv/bin/python"
fi

if ! "$py" -c "import torch" 2>/dev/null; then
  log "installing torch==2.13.0 (CPU build) before anything that depends on it"
  "$py" -m pip install -q torch==2.13.0
fi

# Re-install the package only when its requirements changed (stamp = hash of setup.py + extras).
stamp_dir=$("$py" -c "import sys; print(sys.prefix)")
stamp="$stamp_dir/.distillw2v2-installed"
want=$( (cat "$top/setup.py"; echo "$extras") | sha1sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ] || ! "$py" -c "import distill" 2>/dev/null; then
  log "installing distillw2v2 (editable) with extras [$extras]"
  "$py" -m pip install -q -e "$top[$extras]" 2>&1 | grep -v "is ignored: it is neither" >&2 || true
  "$py" -c "import distill, torch, lhotse, kaldifst, kaldilm, kaldi_decoder, kaldialign, sentencepiece" \
    || { log "the package did not install correctly"; exit 1; }
  echo "$want" > "$stamp"
fi
log "ready: $py (torch $("$py" -c 'import torch; print(torch.__version__)'))"
