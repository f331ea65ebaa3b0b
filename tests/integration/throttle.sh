#!/bin/bash
# throttle.sh: `bandwidth` caps what a VM ships.  16 MiB of new data at a
# cap of 4M (bytes per second) cannot reach the DR site in less than about
# 3.75 s (4 s less the bucket's quarter second); a generous lower bound, so
# that a busy machine cannot fail it, and it fails if the cap is ignored
# (this machine ships 16 MiB in well under a second).  What arrives is
# exact.
set -euo pipefail
. "$(dirname "$0")/functions.sh"

T=$(mktemp -d "${TMPDIR:-/tmp}/replicad-test.XXXXXX")
trap cleanup EXIT
start_sshd
BANDWIDTH=4M write_configs
truncate -s 64M "$T/a/web01.img"
start_b
start_a
wait_replica_point 1 || die "initial copy did not complete"
check "replicad -n shows the cap" sh -c "$BIN/replicad -n -c $T/a.conf | grep -q '^bandwidth = 4M'"

# written while the DR site is away, so that all of it ships after t0
stop_b
head -c 16M /dev/urandom >"$T/data"
nbdcopy "$T/data" "$(URI_A)"
t0=$(date +%s.%N)
start_b
ra checkpoint web01 --wait >/dev/null
t1=$(date +%s.%N)
secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }')
echo "     16 MiB at 4M/s took $secs s"
check "the cap holds shipping to about 4 MiB/s" awk -v s="$secs" 'BEGIN { exit !(s >= 3.0) }'
stop_a
rb --json failover web01 --point latest >"$T/fo.json"
check "what arrived equals the primary" cmp "$T/a/web01.img" "$(jget disks 0 path <"$T/fo.json")"
finish
