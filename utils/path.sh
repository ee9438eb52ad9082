# Shared environment set-up, sourced by each recipe's path.sh: activates the project's Python
# environment (running tools/install.sh first when it does not exist yet).
DISTILL_ROOT=$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.." && pwd)
export DISTILL_ROOT
if [ -z "${VIRTUAL_ENV:-}" ] && [ -z "${CONDA_PREFIX:-}" ]; then
  if [ ! -x "$DISTILL_ROOT/.venv/bin/python" ] || ! "$DISTILL_ROOT/.venv/bin/python" -c "import distill" 2>/dev/null; then
    bash "$DISTILL_ROOT/tools/install.sh" || { echo "path.sh: tools/install.sh failed" >&2; return 1 2>/dev/null || exit 1; }
  fi
  # shellcheck disable=SC1091
  . "$DISTILL_ROOT/.venv/bin/activate"
fi
export PYTHONUNBUFFERED=1
export LC_ALL=C
