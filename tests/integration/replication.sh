#!/bin/bash
# replication.sh: two sites over a real sshd.  Real NBD clients write
# through the primary's export; several points are cut; every point the DR
# site lists fails over to the exact bytes the primary held at that point;
# cancel restores the latest point and replication goes on; a DR restart
# changes nothing; commit keeps one point and ends replication.
set -euo pipefail
. "$(dirname "$0")/functions.sh"

two_sites_setup 64M
URI=$(URI_A)
declare -A SUM

# point 1 is the initial copy
SUM[1]=$(sha256sum <"$T/a/web01.img" | cut -d' ' -f1)
check "initial copy equals the primary" \
	cmp "$T/a/web01.img" "$T/b/replicas/web01/web01.img"

# cycle N: a different client each time, then a point
write_cycle() {
	case $1 in
	0) qemu-io -f raw -c "write -P 0x11 0 1M" -c "write -P 0x22 5M 64k" \
		-c "write -P 0x33 12345 777" -c flush "$URI" ;;
	1) head -c 8M /dev/urandom >"$T/rand"
	   nbdcopy "$T/rand" "$URI" ;;
	2) /usr/bin/nbdsh -u "$URI" -c '
import os
h.pwrite(os.urandom(4096 * 3), 40 << 20)
h.zero(1 << 20, 2 << 20)
h.trim(65536, 3 << 20)
h.pwrite(b"x" * 100, 63 << 20)
h.flush()' ;;
	3) qemu-io -f raw -c "write -z 0 4M" -c "write -P 0x44 50M 2M" "$URI" ;;
	4) fio --name=w --ioengine=nbd --uri="$URI" --rw=randwrite --bs=4k \
		--iodepth=16 --size=16M --offset=32M --io_size=4M --output=/dev/null ;;
	esac
}

for c in 0 1 2 3 4; do
	write_cycle $c >/dev/null 2>"$T/client.err" || die "client cycle $c: $(cat "$T/client.err")"
	id=$(ra checkpoint web01 --label "cycle $c" --wait) || die "checkpoint --wait failed"
	SUM[$id]=$(sha256sum <"$T/a/web01.img" | cut -d' ' -f1)
	echo "point $id: ${SUM[$id]}"
done

# what the DR site holds and the primary's images hold durably (the image
# writer's sync) leaves the journal within a few ticks
drained() {
	for _ in $(seq 200); do
		[ "$(ra --json status web01 | jget vms 0 journal_bytes)" = 0 ] && return 0
		sleep 0.1
	done
	return 1
}
check "the journal is trimmed once the DR site has it" drained

# the threads are named for top -H (replicad(8))
thread_names() { cat /proc/"$1"/task/*/comm | sort -u | tr '\n' ' '; }
names=$(thread_names "$A_PID")
check "the primary's threads are named (got: $names)" \
	grep -q "iw/web01 .*jlog .*ship" <<<"$names"

# an interval point cut by the primary itself would also be listed; these
# are the ones we know the bytes of
rb --json points web01 >"$T/points.json"
ids=$(python3 -c 'import json,sys; print(" ".join(str(p["id"]) for p in json.load(open(sys.argv[1]))["points"]))' "$T/points.json")
check "DR lists points 1..6 ($ids)" test "$ids" = "1 2 3 4 5 6"
check "points carry labels" grep -q '"cycle 2"' "$T/points.json"
check "replica status is replicating" sh -c "rb() { \"$BIN/replica\" -c \"$T/b.conf\" \"\$@\"; }; rb --json status web01 | grep -q '\"state\": \"replicating\"'"

# restart the DR daemon: nothing changes
stop_b
start_b
rb --json points web01 >"$T/points2.json"
check "points unchanged after a DR restart" cmp "$T/points.json" "$T/points2.json"

verify_point() {
	local id=$1 path sum
	rb --json failover web01 --point "$id" >"$T/fo.json" || return 1
	path=$(jget disks 0 path <"$T/fo.json")
	sum=$(sha256sum <"$path" | cut -d' ' -f1)
	[ "$(jget point <"$T/fo.json")" = "$id" ] || return 1
	if [ "$sum" != "${SUM[$id]}" ]; then
		echo "point $id: replica $sum, primary had ${SUM[$id]}"
		return 1
	fi
	rb cancel web01 >/dev/null
}

for id in 6 3 1 5 2 4; do
	check "failover to point $id gives the primary's bytes" verify_point "$id"
done
check "failover to latest then cancel" sh -c "
	\"$BIN/replica\" -c \"$T/b.conf\" failover web01 --point latest >/dev/null &&
	\"$BIN/replica\" -c \"$T/b.conf\" cancel web01 >/dev/null"
check "replica equals primary after cancels" cmp "$T/a/web01.img" "$T/b/replicas/web01/web01.img"

# failed over: what the primary ships is kept, applied after cancel
rb failover web01 --point 2 >/dev/null
qemu-io -f raw -c "write -P 0x55 7M 1M" "$URI" >/dev/null
id=$(ra checkpoint web01 --wait)
SUM[$id]=$(sha256sum <"$T/a/web01.img" | cut -d' ' -f1)
check "failed-over disks are not touched by replication" sh -c "
	test \$(sha256sum <\"$T/b/replicas/web01/web01.img\" | cut -d' ' -f1) = ${SUM[2]}"
check "a second failover is refused while failed over" sh -c "
	! \"$BIN/replica\" -c \"$T/b.conf\" failover web01 --point 1 2>$T/err; grep -q 'already failed over' $T/err"
rb cancel web01 >/dev/null
check "after cancel the new point is applied" verify_point "$id"

# usage and refusals
set +e
rb failover web01 --point 99 2>"$T/err"; rc=$?
set -e
check "failover to an unknown point exits 1 naming it" sh -c "test $rc = 1 && grep -q 'no recovery point 99' $T/err"
set +e
ra failover web01 2>/dev/null; rc=$?
set -e
check "failover without --point is a usage error (2)" test "$rc" = 2
set +e
"$BIN/replica" -c "$T/b.conf" --json status nosuchvm 2>/dev/null; rc=$?
set -e
check "status of an unknown vm exits 1" test "$rc" = 1

# commit: only that point stays; replication from site-a has ended
rb failover web01 --point 4 >/dev/null
rb commit web01 >/dev/null
check "commit keeps only the failover point" sh -c "
	\"$BIN/replica\" -c \"$T/b.conf\" --json points web01 | python3 -c 'import json,sys; p=json.load(sys.stdin)[\"points\"]; assert [x[\"id\"] for x in p]==[4], p'"
check "committed disk holds point 4" sh -c "
	test \$(sha256sum <\"$T/b/replicas/web01/web01.img\" | cut -d' ' -f1) = ${SUM[4]}"
stop_a
start_a
sleep 1
check "primary is told replication ended" sh -c "
	\"$BIN/replica\" -c \"$T/a.conf\" --json status web01 | grep -q 'committed'"

finish
