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
# the MONAI Deploy App SDK 4.0.0 with exact pins, --no-deps: the SDK requires tritonclient[all], which would downgrade
# the protobuf and ml-dtypes that tensorboard, onnx and mlflow use (apps/deploy/requirements-deploy.txt says more)
"$PYTHON" -m pip install -q --no-deps -r apps/deploy/requirements-deploy.txt
if "$PYTHON" -c 'import sys; sys.exit(0 if sys.prefix != sys.base_prefix else 1)'; then
  # in a venv: holoscan's .pth hook imports filelock before the system site-packages are on sys.path
  "$PYTHON" -m pip install -q --no-deps --ignore-installed "filelock==$("$PYTHON" -c 'import filelock; print(filelock.__version__)')"
fi
"$PYTHON" apps/deploy/app.py --help >/dev/null  # the SDK's imports (monai.deploy, holoscan) resolve
echo "MONAI Deploy App SDK: $("$PYTHON" -m pip show monai-deploy-app-sdk 2>/dev/null | sed -n 's/^Version: //p')"
