#!/bin/bash
# bench/pair.sh BIN_A BIN_B [ROUNDS]
#
# The shipping cycle of two builds, interleaved (A, B, A, B, ...), to tell
# a change from the noise of this machine: 1 GiB of random data written
# through site-a's export while the DR site is down (journaled), then
# site-b started and timed from "replicating" until `replica checkpoint
# --wait` returns (SSH, before-images saved, images written, fsync).
# Prints MB/s per run and whether the replica equals the primary image.
# BIN_A and BIN_B are build/bin directories (absolute or relative); needs
# root (functions.sh's sshd) and nbdcopy.  Knobs: PAIR_SIZE (1G),
# BENCH_TMPDIR (/var/tmp), PIN=1 (the primary on CPU 0; sshd, serve and
# the DR site on CPU 1).
set -uo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
export TMPDIR=${BENCH_TMPDIR:-/var/tmp}
# shellcheck source=../tests/integration/functions.sh
. "$ROOT/tests/integration/functions.sh"

[ $# -ge 2 ] || { echo "usage: $0 BIN_A BIN_B [ROUNDS]" >&2; exit 2; }
BIN_A=$(cd "$1" && pwd) || exit 2
BIN_B=$(cd "$2" && pwd) || exit 2
ROUNDS=${3:-3}
SIZE=${PAIR_SIZE:-1G}
export JOURNAL_MAX=64G	# every write journaled

now() { date +%s.%N; }

pin() {
	local p t
	for t in /proc/"$A_PID"/task/*; do taskset -p -c 0 "${t##*/}" >/dev/null; done
	for p in $(pgrep -x sshd) "$B_PID" $(pgrep -f "replicad serve"); do
		for t in /proc/"$p"/task/*; do taskset -p -c 1 "${t##*/}" >/dev/null; done
	done
}

sites_end() {
	cleanup
	T='' A_PID='' B_PID='' SSHD_PID=''
	export SSHD_PID	# functions.sh's
}

# one_run BIN: prints "N MB/s, replica OK|MISMATCH" or "FAILED why"
one_run() {
	local t0 t1 bytes _
	BIN=$1
	T=$(mktemp -d "$TMPDIR/replicad-pair.XXXXXX")
	start_sshd
	write_configs 1h 1h:all
	truncate -s "$SIZE" "$T/a/web01.img"
	start_b
	start_a
	for _ in 1 2 3 4 5; do wait_replica_point 1 && break; done
	journal_while_down "$(numfmt --from=iec "$SIZE")" ||
	    { echo "FAILED writing while the DR site is down"; sites_end; return; }
	[ -n "${PIN:-}" ] && pin
	t0=$(now)
	if ! timeout 600 "$BIN/replica" -c "$T/a.conf" checkpoint web01 --wait >/dev/null; then
		echo "FAILED checkpoint --wait"
		sites_end
		return
	fi
	t1=$(now)
	bytes=$(stat -c %s "$T/a/web01.img")
	awk -v a="$t0" -v b="$t1" -v n="$bytes" 'BEGIN { printf "%.1f MB/s, replica ", n / (b - a) / 1e6 }'
	dr_settled
	if cmp -s "$T/a/web01.img" "$T/b/replicas/web01/web01.img"; then
		echo OK
	else
		echo MISMATCH
	fi
	sites_end
}

RES=$(mktemp "$TMPDIR/replicad-pair-res.XXXXXX")
trap 'cleanup; rm -f "$RES"' EXIT
for r in $(seq "$ROUNDS"); do
	for side in A B; do
		if [ $side = A ]; then one_run "$BIN_A" >"$RES"; else one_run "$BIN_B" >"$RES"; fi
		echo "round $r $side: $(cat "$RES")"
	done
done
