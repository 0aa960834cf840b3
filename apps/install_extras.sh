#!/usr/bin/env bash
# Install the serving apps' extras into the CURRENT Python environment (the one `python` runs), beside the bundle's
# requirements: MONAI Label (apps/monailabel/) and the MONAI Deploy App SDK. Nothing of the bundle's stack (torch,
# monai, numpy, pydicom ...) changes; docs/SERVING.md, says why each step is as it is.
#   bash apps/install_extras.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python}"

# --- MONAI Label ---
# without its dependencies: a plain install pulls sam2/numpymaxflow/ninja/torchvision and can resolve to numpy 1
"$PYTHON" -m pip install -q --no-deps monailabel==0.8.5 pydicom-seg==0.4.1
"$PYTHON" -m pip install -q -r requirements-monailabel.txt
"$PYTHON" -c "import monailabel; print('monailabel', monailabel.__version__)"

# --- MONAI Deploy ---
