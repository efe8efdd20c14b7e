#!/usr/bin/env bash
# Install everything napari-fewshot needs into .venv at the project root.
#
#   bash scripts/setup.sh
#
# 1. Debian packages for a virtual X server (the tests run a real napari viewer
#    under Xvfb), when Xvfb is missing and apt-get is available.
# 2. A virtual environment at .venv.
# 3. The pinned torch/torchvision pair first (a CUDA build that also runs on the
#    CPU), so that the project's own `torch>=2.2` does not pull another build.
# 4. The project itself, editable, with its test extras.
set -euo pipefail
cd "$(dirname "$0")/.."

TORCH_PIN=${TORCH_PIN:-"torch==2.14.1 torchvision==0.29.1"}
PYTHON=${PYTHON:-python3}
XVFB_PACKAGES="xvfb xauth libxcb-icccm4 libxcb-keysyms1 libxcb-xinerama0 libxcb-cursor0 libxkbcommon-x11-0 libgl1 libegl1 libdbus-1-3 libfontconfig1"

if ! command -v Xvfb >/dev/null 2>&1; then
    if command -v apt-get >/dev/null 2>&1; then
        sudo=""
        [ "$(id -u)" -eq 0 ] || sudo="sudo"
        echo "setup: installing Debian packages for Xvfb: $XVFB_PACKAGES"
        $sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends $XVFB_PACKAGES
    else
        echo "setup: Xvfb is missing and apt-get is not available; install Xvfb by hand to run the GUI tests" >&2
    fi
fi

if [ ! -x .venv/bin/python ]; then
    echo "setup: creating .venv with $($PYTHON --version)"
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
echo "setup: installing $TORCH_PIN"
# shellcheck disable=SC2086
.venv/bin/python -m pip install -q $TORCH_PIN
echo "setup: installing napari-fewshot[test] (editable)"
.venv/bin/python -m pip install -q -e ".[test]"
echo "setup: done. Run the tests with: .venv/bin/pytest"
