#!/bin/sh
# Installs the Debian packages hybridssl can use when they are missing and apt is usable:
#   dataset-fashion-mnist  the demo's data (otherwise: --data-dir, $HYBRIDSSL_DATA or --download)
#   libtcmalloc-minimal4   a faster CPU step (hybridssl preloads it when present)
#   chromium + chromium-driver (with the argument `test`): the report test renders report.html
# Nothing here is required: without them the demo downloads when online and the report test is skipped.
set -u
need=""
[ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] || need="$need dataset-fashion-mnist"
ls /usr/lib/*/libtcmalloc_minimal.so.4 >/dev/null 2>&1 || need="$need libtcmalloc-minimal4"
if [ "${1:-}" = "test" ]; then
  command -v chromium >/dev/null 2>&1 || need="$need chromium"
  command -v chromedriver >/dev/null 2>&1 || need="$need chromium-driver"
fi
[ -z "$need" ] && exit 0
if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  echo "installing with apt:$need"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $need) >/tmp/hybridssl-apt.log 2>&1 \
    || echo "note: apt could not install$need (see /tmp/hybridssl-apt.log); continuing without"
else
  echo "note: missing$need and apt is not usable here; continuing without (see docs/data.md, "Named datasets")"
fi
exit 0
