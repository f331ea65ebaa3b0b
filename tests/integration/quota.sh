#!/bin/bash
# quota.sh: a DR outage longer than the journal quota.  Past journal_max the
# primary stops journaling data and tracks changed chunks in a persistent
# dirty map; the VM's writes go on.  When the DR site is back, the journal
# is sent, then the dirty chunks as a catch-up, and a point is cut once it
# is all sent.  The recovery history from before the outage is kept and
# every point still fails over to the primary's bytes.  A kill -9 of the
# primary while the map is in use, and again during the catch-up, loses
# nothing.
set -euo pipefail
. "$(dirname "$0")/functions.sh"

T=$(mktemp -d "${TMPDIR:-/tmp}/replicad-test.XXXXXX")
trap cleanup EXIT
start_sshd
JOURNAL_MAX=16M write_configs
truncate -s 512M "$T/a/web01.img"
dd if=/dev/urandom of="$T/a/web01.img" bs=1M count=8 conv=notrunc status=none
start_b
start_a
wait_replica_point 1 || die "initial copy did not complete"

qw() { qemu-io -f raw "$@" "$(URI_A)" >/dev/null; }
st() { ra --json status web01 | jget vms 0 "$@"; }
last_point() { rb --json status web01 | jget vms 0 last_point; }

# point 2: a state from before the outage, to fail over to at the end
qw -c "write -P 0x21 0 4M" -c "write -P 0x22 100M 1M"
ra checkpoint web01 --wait >/dev/null
cp --sparse=always "$T/a/web01.img" "$T/p2.img"

stop_b
# 6 MiB fit in the journal, and a point of them is cut
qw -c "write -P 0x31 1M 6M"
p3=$(ra --json checkpoint web01 | jget point)
cp --sparse=always "$T/a/web01.img" "$T/p3.img"
# then 200 MiB more than the journal may hold, some zeroes among them
head -c 200M /dev/urandom >"$T/big"
nbdcopy "$T/big" "$(URI_A)"
qw -c "write -z 50M 3M" -c "write -P 0x41 300M 64K" -c "flush"
check "the primary says its journal is full" test "$(st state)" = journal-full
check "the journal stays within its quota" \
	test "$(st journal_bytes)" -le $((16 << 20))
check "the changed chunks are tracked" test "$(st dirty_bytes)" -ge $((150 << 20))
check "a point is refused while changes are outside the journal" \
	sh -c "! $BIN/replica -c $T/a.conf checkpoint web01 2>$T/refused.txt"
check "the refusal names the quota" grep -q "journal_max" "$T/refused.txt"
check "the map is written to the log" grep -q "tracked in a dirty map" "$T/a.log"

# a crash while the map is in use: the map and the flushed writes stay
crash_a
start_a
check "after the crash the map is still there" \
	test "$(st dirty_bytes)" -ge $((150 << 20))
# one write to a chunk the map holds (straight to the image), one not
qw -c "write -P 0x43 10M 64K" -c "write -P 0x42 301M 64K" -c "flush"

# the DR site is back: journal, then catch-up, then a point
start_b
for _ in $(seq 300); do
	[ "$(st state)" = catching-up ] && break
	[ "$(last_point)" -gt "$p3" ] && break
	sleep 0.05
done
# a write during the catch-up, and a crash of the primary in it
qw -c "write -P 0x51 2M 64K"
crash_a
start_a
want=$((p3 + 1))
for _ in $(seq 600); do
	[ "$(last_point)" -ge "$want" ] && break
	sleep 0.1
done
check "a catch-up point reaches the DR site" test "$(last_point)" -ge "$want"
check "the catch-up is in the log" grep -q "catch-up of" "$T/a.log"
check "no full copy was made" test "$(sed -n "/catch-up of/,\$p" "$T/a.log" | grep -c "initial copy to")" = 0
ra checkpoint web01 --wait >/dev/null
check "the map is cleared once the DR site holds it" test "$(st dirty_bytes)" = 0
check "state is back to replicating" test "$(st state)" = replicating
pts=$(rb --json points web01 | python3 -c 'import json,sys; print(" ".join(str(p["id"]) for p in json.load(sys.stdin)["points"]))')
check "the history from before the outage is kept (points 2 and $p3)" \
	sh -c "echo ' $pts ' | grep -q ' 2 ' && echo ' $pts ' | grep -q ' $p3 '"
stop_a	# the primary's image is final now

fo_check latest "$T/a/web01.img" "the latest point equals the primary"
fo_check 2 "$T/p2.img" "point 2 (before the outage) fails over exactly"
fo_check "$p3" "$T/p3.img" "point $p3 (journaled before the quota) fails over exactly"
finish
