# Sourced by the scripts here. They run where the user stands (relative paths are the user's) and
# use the environment's Python: $PYTHON if set, else the active virtual environment's, else python3.
# REPO is this repository (its experiments/), and acol is importable from it.
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PYTHON=${PYTHON:-${VIRTUAL_ENV:+$VIRTUAL_ENV/bin/python}}
PYTHON=${PYTHON:-python3}
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
