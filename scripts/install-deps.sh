#!/bin/sh
# Install every package kvcd needs to build, test, benchmark and run, from Debian's
# archive. Idempotent: packages already present are left as they are.
set -eu

PKGS="build-essential pkg-config
libuv1-dev libzmq3-dev libmsgpack-dev libjansson-dev check
libxxhash-dev libhiredis-dev redis-server memcached
libmicrohttpd-dev prometheus
python3 python3-zmq python3-msgpack python3-venv
procps util-linux b3sum"

if [ "$(id -u)" -ne 0 ]; then
    SUDO=sudo
else
    SUDO=
fi

missing=
for p in $PKGS; do
    dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q 'install ok installed' \
        || missing="$missing $p"
done

if [ -z "$missing" ]; then
    echo "install-deps: all packages present"
    exit 0
fi

echo "install-deps: installing$missing"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
# shellcheck disable=SC2086
$SUDO apt-get install -y -q --no-install-recommends $missing
