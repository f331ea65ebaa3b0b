#!/bin/bash
# replicad_nbd.sh SOCKET FILE: serve FILE as export vm/disk through a
# primary replicad (journaling every write; its DR peer is unreachable,
# which a primary tolerates), for nbd_clients.sh.
set -eu
sock=$1 file=$2
# state lives beside the socket, in the caller's temp dir
dir=$(dirname "$sock")/replicad-state
mkdir -p "$dir"
case $file in
*/disk.raw) ;;
*) echo "replicad_nbd.sh: FILE must be named disk.raw (export vm/disk)" >&2; exit 2 ;;
esac
cat >"$dir/r.conf" <<EOC
[site]
name = site-a
state_dir = $dir/state
control = $dir/control.sock
nbd = $sock

[peer site-b]
host = 127.0.0.1
port = 9
key = $dir/none
known_hosts = $dir/none

[vm vm]
disk = $file
replicate_to = site-b
EOC
exec "${BIN:?}/replicad" -d -c "$dir/r.conf"
