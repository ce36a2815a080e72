# Sourced at the start of a command on the `device` tool's machine, from the repository root, with
# .device-bundle carried (benchmarks/archive/device_bundle.sh makes it here): installs the bundled wheels into
# /tmp/site, puts src/ (the package, not installed) and them on PYTHONPATH, points the data lookup at the
# bundled Fashion-MNIST, and sets PYTHON / HYBRIDSSL for the benchmark scripts. Fails (returns 1) when the
# bundle is missing or the package does not import.
#   . benchmarks/archive/device_env.sh && python3 benchmarks/archive/results_gpu.py runs/results-gpu
BUNDLE=${BUNDLE:-.device-bundle}
if [ ! -d "$BUNDLE/wheels" ]; then
    echo "device_env: no $BUNDLE/wheels: run 'sh benchmarks/archive/device_bundle.sh' here and carry $BUNDLE" >&2
    return 1 2>/dev/null || exit 1
fi
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$BUNDLE"/wheels/*.whl \
    || { echo "device_env: installing the wheels failed" >&2; return 1 2>/dev/null || exit 1; }
export PYTHONPATH="$PWD/src:/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
case $BUNDLE in /*) export HYBRIDSSL_DATA="$BUNDLE/data" ;; *) export HYBRIDSSL_DATA="$PWD/$BUNDLE/data" ;; esac
export PYTHON=python3 HYBRIDSSL="python3 -m hybridssl" PYTHONUNBUFFERED=1
python3 -c "import hybridssl.cli, kornia, torch; print('device_env: hybridssl from src/, torch', torch.__version__, 'cuda', torch.cuda.is_available())" \
    || { echo "device_env: hybridssl does not import" >&2; return 1 2>/dev/null || exit 1; }
