#!/bin/bash
# catchup_race.sh: two VMs on one link.  web01 goes over its journal quota
# during a DR outage while db01 builds a big journal backlog, so the link
# keeps pumping while web01's catch-up starts; the primary's journal syncs
# are slowed (tests/integration/slowsync.c, a slow disk) to widen the
# moment between the commit that reserves the catch-up's sequence numbers
# and what follows it.  The shipper must never stream past the reserved
# range: web01's latest point equals its primary image.
set -euo pipefail
. "$(dirname "$0")/functions.sh"
[ -n "${SLOWSYNC:-}" ] && [ -f "$SLOWSYNC" ] || die "SLOWSYNC (the shim) not set"
# an ASan build wants its runtime first in the preload list
asan=$(ldd "$BIN/replicad" | awk '/libasan/ { print $3 }')
start_a() {
	rm -f "$T/a/control.sock"
	LD_PRELOAD="${asan:+$asan }$SLOWSYNC" SLOWSYNC_MS=20 \
	    "$BIN/replicad" -d -c "$T/a.conf" >>"$T/a.log" 2>&1 &
	A_PID=$!
	wait_sock "$T/a/control.sock" "$A_PID" || die "site-a did not start"
}

T=$(mktemp -d "${TMPDIR:-/tmp}/replicad-test.XXXXXX")
trap cleanup EXIT
start_sshd
JOURNAL_MAX=8M write_configs
cat >>"$T/a.conf" <<EOC

[vm db01]
disk = $T/a/db01.img
replicate_to = site-b
interval = 1h
keep = 1h:all
compress = none
journal_max = 2G
EOC
truncate -s 512M "$T/a/web01.img" "$T/a/db01.img"
start_b
start_a
wait_replica_point 1 || die "initial copy did not complete"
for _ in $(seq 100); do
	rb --json status db01 2>/dev/null | jget vms 0 last_point 2>/dev/null | grep -q '^[1-9]' && break
	sleep 0.1
done
URI_D="nbd+unix:///db01/db01?socket=$T/a/nbd.sock"
stop_b
head -c 40M /dev/urandom >"$T/w"
nbdcopy "$T/w" "$(URI_A)"	# web01 over its quota
head -c 400M /dev/urandom >"$T/d"
nbdcopy "$T/d" "$URI_D"		# db01's backlog
check "web01 is over its quota" test "$(ra --json status web01 | jget vms 0 state)" = journal-full
start_b
check "web01 settles" settle web01
ra checkpoint db01 --wait >/dev/null
stop_a
rb --json failover web01 --point latest >"$T/fo.json"
check "web01: the latest point equals the primary" cmp "$T/a/web01.img" "$(jget disks 0 path <"$T/fo.json")"
rb cancel web01 >/dev/null
rb --json failover db01 --point latest >"$T/fo.json"
check "db01: the latest point equals the primary" cmp "$T/a/db01.img" "$(jget disks 0 path <"$T/fo.json")"
finish
