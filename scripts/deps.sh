#!/bin/sh
# deps.sh: install what replicad needs from Debian packages (build, tests,
# demo and benchmarks).  Run as root on Debian 12.  Installs only what is
# missing; runs apt-get update only when something is.
set -eu
PKGS="build-essential cmake pkg-config libevent-dev libssh2-1-dev liblmdb-dev
lmdb-utils protobuf-c-compiler libprotobuf-c-dev libcmocka-dev libzstd-dev
libjansson-dev openssh-server openssh-client qemu-utils libnbd-bin nbdkit fio
python3 python3-libnbd rsync nftables"
missing=""
for p in $PKGS; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" ||
		missing="$missing $p"
done
if [ -n "$missing" ]; then
	echo "deps: installing$missing"
	if [ "$(id -u)" -ne 0 ]; then
		echo "deps: run as root to install packages" >&2
		exit 1
	fi
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	# shellcheck disable=SC2086
	apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi
