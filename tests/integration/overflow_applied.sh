#!/bin/bash
# overflow_applied.sh: the journal reaches its quota while the DR site is
# connected and behind.  Entering overflow marks everything written
# applied before writes go straight to the image; a later trim must not
# set the applied mark back to an older image sync, or a restart after a
# kill -9 replays old journal data over a write the dirty map tracks.
set -euo pipefail
. "$(dirname "$0")/functions.sh"

T=$(mktemp -d "${TMPDIR:-/tmp}/replicad-test.XXXXXX")
trap cleanup EXIT
start_sshd
JOURNAL_MAX=16M BANDWIDTH=1M write_configs
truncate -s 128M "$T/a/web01.img"
start_b
start_a
wait_replica_point 1 || die "initial copy did not complete"
qw() { qemu-io -f raw "$@" "$(URI_A)" >/dev/null; }
st() { ra --json status web01 | jget vms 0 "$@"; }

head -c 12M /dev/urandom >"$T/f1"
head -c 16M /dev/urandom >"$T/f2"
# F1: journaled, ships at 1 MiB/s; within a few ticks the DR site acks
# some of it and the writer syncs the images: synced_seq = end of F1
qw -c "write -s $T/f1 16M 12M" -c flush
sleep 5
# X1, journaled after that sync; then the journal reaches its quota
qw -c "write -P 0x11 4M 64K"
qw -c "write -s $T/f2 32M 16M" -c flush
check "the journal is full" test "$(st state)" = journal-full
# X2: the same block, straight to the image (dirty map), flushed
qw -c "write -P 0x22 4M 64K" -c flush
# the DR site acks more of F1 (still below synced_seq): a trim
sleep 2.5
crash_a
start_a
sleep 0.5
stop_a
grep -E "replaying|journal holds" "$T/a.log" || true
head -c 65536 /dev/zero | tr '\0' '\042' >"$T/x2"
check "the write the dirty map tracks survives a kill -9" \
	cmp "$T/x2" <(dd if="$T/a/web01.img" bs=64K skip=64 count=1 status=none)
od -An -tx1 -N4 -j $((4 << 20)) "$T/a/web01.img"
finish
