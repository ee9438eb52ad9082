#!/usr/bin/env bash
# The test command of the README: sets everything up (tools/install.sh), then runs the test suite.
# Extra arguments go to pytest, e.g. tools/test.sh -m "not slow" -k lfmmi
set -euo pipefail
top=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$top"
bash tools/install.sh
if [ -n "${VIRTUAL_ENV:-}" ] || [ -n "${CONDA_PREFIX:-}" ]; then py=python; else py="$top/.venv/bin/python"; fi
set +e
"$py" -m pytest -q -ra "$@"
rc=$?
set -e
if [ $rc -eq 5 ]; then echo "error: pytest collected no tests" >&2; exit 1; fi
exit $rc
