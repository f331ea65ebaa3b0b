#!/bin/bash
# resume.sh: an initial copy cut by a dropped link, and then by a kill -9
# of the DR daemon, goes on from what the DR site holds durably instead of
# starting over; writes made meanwhile to parts already copied arrive
# through the journal; the first point fails over to the primary's bytes.
set -euo pipefail
. "$(dirname "$0")/functions.sh"

T=$(mktemp -d "${TMPDIR:-/tmp}/replicad-test.XXXXXX")
trap cleanup EXIT
start_sshd
# capped, so that the copy is still under way when the link drops and when
# the DR daemon dies, however fast the machine
BANDWIDTH=96M write_configs
truncate -s 1G "$T/a/web01.img"
head -c 640M /dev/urandom | dd of="$T/a/web01.img" conv=notrunc bs=1M status=none
start_b
start_a

copied() { rb --json status web01 2>/dev/null | jget vms 0 initial_copy done 2>/dev/null || echo 0; }
wait_copied() {	# until the DR site reports more than $1 bytes
	for _ in $(seq 300); do
		[ "$(copied)" -gt "$1" ] && return 0
		sleep 0.1
	done
	return 1
}

wait_copied $((128 << 20)) || die "the initial copy did not start"
sleep 1.2	# a checkpoint of the copy's progress
pkill -KILL -f "sshd: root@notty" || true
# writes to a part already copied: they must come through the journal
qemu-io -f raw -c "write -P 0x77 16M 4M" -c "write -z 40M 1M" "$(URI_A)" >/dev/null
wait_copied $((256 << 20)) || die "the copy did not go on after the drop"
sleep 1.2
crash_b
start_b
wait_replica_point 1 || die "the initial copy did not complete"
check "the copy resumed after the dropped link" grep -q "resuming the initial copy" "$T/a.log"
resumed_twice() {	# shows the copy's log lines when it fails
	grep "initial copy" "$T/a.log"
	test "$(grep -c "resuming the initial copy" "$T/a.log")" -ge 2
}
check "the copy resumed after the DR crash" resumed_twice
rb --json failover web01 --point 1 >"$T/fo.json"
check "point 1 equals the primary" cmp "$T/a/web01.img" "$(jget disks 0 path <"$T/fo.json")"
rb cancel web01 >/dev/null
finish
