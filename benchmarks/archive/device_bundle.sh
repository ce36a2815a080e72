#!/bin/sh
# What a bare machine of the `device` tool needs to run hybridssl, gathered here (where PyPI is reachable)
# into BUNDLE (default .device-bundle, git-ignored): wheels of the dependencies its Python lacks and
# Fashion-MNIST's IDX files. Its python3 (3.12) has torch, torchvision, timm, lightning, scikit-learn,
# scipy, matplotlib, safetensors, tensorboard and PyYAML, but not kornia or pydantic, and nothing can be
# fetched there. The wheels are the versions of this checkout's .venv (the combination the tests pass
# with); benchmarks/archive/device_env.sh installs them there. About 40 MB (the tool carries at most 64 MiB).
#   sh benchmarks/archive/device_bundle.sh [BUNDLE]
# then, in the device call: carry [".device-bundle"], command ". benchmarks/archive/device_env.sh && ..."
set -eu
BUNDLE=${1:-.device-bundle}
PYTHON=${PYTHON:-.venv/bin/python}
DEVICE_PYTHON=${DEVICE_PYTHON:-3.12}
version() { "$PYTHON" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$1"; }
rm -rf "$BUNDLE/wheels"
mkdir -p "$BUNDLE/wheels" "$BUNDLE/data/fashion-mnist"
SPECS=""
for package in kornia kornia_rs pydantic pydantic_core annotated-types typing-inspection typing_extensions; do
    SPECS="$SPECS $package==$(version $package)"
done
# shellcheck disable=SC2086  # SPECS is a list
"$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version "$DEVICE_PYTHON" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$BUNDLE/wheels" $SPECS
FOUND=$("$PYTHON" -c "from hybridssl.data.sources import _find_fashion_mnist as f; print(f(None, False))")
for name in train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte; do
    cp "$FOUND/$name.gz" "$BUNDLE/data/fashion-mnist/"  # the compressed files only: 30 MB, not 55 more
done
ls "$BUNDLE/wheels"
du -sh "$BUNDLE"
