#!/bin/bash
# quota_load.sh: sustained random writes with the DR site up and a journal
# quota far below what they write: the VM goes round journal, dirty map,
# catch-up (and a new overflow during a catch-up) many times.  When the
# writes stop it settles: the latest point equals the primary, and the map
# is empty again.
set -euo pipefail
. "$(dirname "$0")/functions.sh"

T=$(mktemp -d "${TMPDIR:-/tmp}/replicad-test.XXXXXX")
trap cleanup EXIT
start_sshd
JOURNAL_MAX=8M write_configs 2s
truncate -s 256M "$T/a/web01.img"
start_b
start_a
wait_replica_point 1 || die "initial copy did not complete"

fio --name=load --ioengine=nbd --uri="$(URI_A)" --rw=randwrite --bs=4k \
    --iodepth=32 --size=256M --time_based --runtime=8 --refill_buffers \
    >"$T/fio.log" 2>&1 || die "fio failed: $(tail -n 3 "$T/fio.log")"
check "replication settles after the load" settle web01
n=$(grep -c "catch-up of" "$T/a.log" || true)
echo "     $n catch-up(s), $(grep -c "tracked in a dirty map" "$T/a.log" || true) overflow(s)"
check "the load went past the quota and caught up" test "$n" -ge 1
st() { ra --json status web01 | jget vms 0 "$@"; }
for _ in $(seq 50); do	# the map is cleared on the next tick
	[ "$(st dirty_bytes)" = 0 ] && break
	sleep 0.1
done
check "the dirty map is empty again" test "$(st dirty_bytes)" = 0
stop_a
rb --json failover web01 --point latest >"$T/fo.json"
check "the latest point equals the primary" cmp "$T/a/web01.img" "$(jget disks 0 path <"$T/fo.json")"
finish
