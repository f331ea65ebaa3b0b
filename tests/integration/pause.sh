#!/bin/bash
# pause.sh: `replica pause` stops shipping a VM and `replica resume` goes
# on from where it stopped.  While paused, writes are journaled and points
# are cut on the primary but nothing reaches the DR site; the pause
# survives a restart of the primary; after resume every point arrives and
# fails over to the primary's bytes at that point.
set -euo pipefail
. "$(dirname "$0")/functions.sh"

two_sites_setup 64M
qw() { qemu-io -f raw "$@" "$(URI_A)" >/dev/null; }
st() { ra --json status web01 | jget vms 0 "$@"; }
dr_point() { rb --json status web01 | jget vms 0 last_point; }

ra pause web01 >/dev/null
check "status says paused" test "$(st state)" = paused
check "pausing twice is refused" sh -c "! $BIN/replica -c $T/a.conf pause web01 2>/dev/null"
before=$(dr_point)
qw -c "write -P 0x61 0 2M"
p2=$(ra --json checkpoint web01 | jget point)
cp "$T/a/web01.img" "$T/p2.img"
check "checkpoint --wait while paused is refused with the reason" \
	sh -c "! $BIN/replica -c $T/a.conf checkpoint web01 --wait 2>$T/err.txt && grep -q paused $T/err.txt"
p3=$(ra --json points web01 | python3 -c 'import json,sys; print(json.load(sys.stdin)["points"][-1]["id"])')
cp "$T/a/web01.img" "$T/p3.img"
sleep 2
check "nothing reached the DR site while paused" test "$(dr_point)" = "$before"

stop_a
start_a
check "the pause survives a restart" test "$(st state)" = paused
qw -c "write -P 0x62 8M 1M"

ra resume web01 >/dev/null
check "resuming twice is refused" sh -c "! $BIN/replica -c $T/a.conf resume web01 2>/dev/null"
ra checkpoint web01 --wait >/dev/null
check "after resume the DR site has the new point" test "$(dr_point)" -gt "$p3"
check "status is replicating again" test "$(st state)" = replicating
stop_a
fo_check "$p2" "$T/p2.img" "point $p2, cut while paused, fails over exactly"
fo_check "$p3" "$T/p3.img" "point $p3, cut while paused, fails over exactly"
fo_check latest "$T/a/web01.img" "the latest point equals the primary"
finish
