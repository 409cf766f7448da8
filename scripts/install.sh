#!/usr/bin/env bash
# Install this project into the active Python environment: `pip install -e .` (the `promptkd`
# package and command, its PyPI dependencies and the test tools), then Dassl from GitHub at the
# commit we test with. Dassl's setup.py imports numpy (hence --no-build-isolation) and pins tools
# it does not need at run time (hence --no-deps plus the packages it imports, listed here).
set -euo pipefail
cd "$(dirname "$0")/.."
# DASSL may name another source for Dassl (a wheel built from the same commit, as CI uses).
PYTHON=${PYTHON:-python}
DASSL_COMMIT=c61a1b570ac6333bd50fb5ae06aea59002fb20bb
DASSL=${DASSL:-"dassl @ git+https://github.com/KaiyangZhou/Dassl.pytorch@${DASSL_COMMIT}"}
"$PYTHON" -m pip install -e ".[test]"
"$PYTHON" -m pip install gdown scikit-learn pandas wilds tensorboard
"$PYTHON" -m pip install --no-build-isolation --no-deps "$DASSL"
"$PYTHON" -c "import dassl, clip, torch, promptkd.trainers; print('ok: dassl', dassl.__version__, '| torch', torch.__version__)"
