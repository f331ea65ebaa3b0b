#!/bin/bash
# bench/run.sh [all|nbd|ssh|cycle|failover]...
#
# Benchmarks replicad against peer tools measured in the same invocation,
# on this machine, and prints a table per benchmark and, at the end, a
# markdown table for the README.  Needs root (the private sshd of
# tests/integration/functions.sh), a built tree (build/bin), fio, qemu-nbd,
# nbdkit, nbdcopy, rsync, openssh and libssh2-dev (the libssh2 peer is
# bench/ssh_push.c, compiled here).
#
#   nbd       fio --ioengine=nbd: 4 KiB randwrite QD32 and 1 MiB seq write
#             QD8 against replicad's export (every write journaled, DR
#             site up and down; and with the default journal_max of 25%,
#             DR site down: the journal, then the dirty map), qemu-nbd and
#             nbdkit, each on a fresh sparse 1 GiB raw file
#   ssh       1 GiB of random data: written through replicad's export and
#             timed until `replica checkpoint --wait` returns, vs a libssh2
#             exec channel and OpenSSH pushing it to `cat >/dev/null`
#   cycle     2 GiB image of random data, 5% of its 4 KiB blocks rewritten
#             at random, 3 rounds: replicad (rewrite .. checkpoint --wait,
#             and last write .. checkpoint --wait; medians) vs rsync
#             --inplace --no-whole-file (default block and -B 4096) over ssh;
#             then 5% more rewritten while the DR site is down, past a
#             journal_max of 16M: the catch-up from the dirty map, timed
#             from the primary's link being back (its reconnect wait,
#             from the DR site's start, is noted apart)
#   failover  2 GiB and 8 GiB disks, 10 points each rewriting 1% of the
#             blocks: failover to the latest point and to 10 points back,
#             cancel, sha256 check; peer: a full image copy (cp --sparse)
#
# Knobs (environment): NBD_RUNTIME (15), NBD_SIZE (1G), SSH_SIZE (1G),
# CYCLE_SIZE (2G), CYCLE_PCT (5), CYCLE_REPEAT (3 rounds, medians), FAILOVER_SIZES ("2G 8G"),
# FAILOVER_POINTS (10), FAILOVER_PCT (1), BENCH_TMPDIR (/var/tmp),
# CMD_TIMEOUT (900 s, for replica commands that wait).
set -uo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
BIN=${BIN:-$ROOT/build/bin}
export TMPDIR=${BENCH_TMPDIR:-/var/tmp}
# shellcheck source=../tests/integration/functions.sh
. "$ROOT/tests/integration/functions.sh"
PY=/usr/bin/python3	# has the nbd module; functions.sh puts /usr/bin first

NBD_RUNTIME=${NBD_RUNTIME:-15}
NBD_SIZE=${NBD_SIZE:-1G}
SSH_SIZE=${SSH_SIZE:-1G}
CYCLE_SIZE=${CYCLE_SIZE:-2G}
CYCLE_PCT=${CYCLE_PCT:-5}
CYCLE_REPEAT=${CYCLE_REPEAT:-3}
FAILOVER_SIZES=${FAILOVER_SIZES:-2G 8G}
FAILOVER_POINTS=${FAILOVER_POINTS:-10}
FAILOVER_PCT=${FAILOVER_PCT:-1}
CMD_TIMEOUT=${CMD_TIMEOUT:-900}
# Every write journaled: a quota above anything a run writes.  The nbd
# benchmark adds a run with the default quota (25% of the disk).
export JOURNAL_MAX=64G

usage() {
	echo "usage: $0 [all|nbd|ssh|cycle|failover]..." >&2
	exit 2
}

# ---------------------------------------------------------------- helpers

now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b - a }'; }
ms() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.0f", (b - a) * 1000 }'; }
mbps() { awk -v n="$1" -v s="$2" 'BEGIN { printf "%.1f", n / s / 1e6 }'; }
bytes_of() { numfmt --from=iec "$1"; }
median() { printf '%s\n' "$@" | sort -g | awk '{ a[NR] = $1 } END { print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
log() { echo "[$(date +%T)] $*" >&2; }

# result BENCH METRIC UNIT OURS PEER PEER_VALUE: one row of the tables
# (ratio = OURS / PEER_VALUE, computed by report.py)
result() {
	printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$@" >>"$BT/results.tsv"
	printf '  %-9s %-44s replicad %-10s %-34s %s\n' "$1" "$2 ($3)" "$4" "$5" "$6" >&2
}
note() { printf '%s\t%s\n' "$1" "$2" >>"$BT/notes.tsv"; log "note ($1): $2"; }

ra_long() { timeout "$CMD_TIMEOUT" "$BIN/replica" -c "$T/a.conf" "$@"; }
rb_long() { timeout "$CMD_TIMEOUT" "$BIN/replica" -c "$T/b.conf" "$@"; }

sha() { sha256sum <"$1" | cut -d' ' -f1; }

# cpu_secs PID: user+system CPU seconds the process has used so far
cpu_secs() {
	awk -v hz="$(getconf CLK_TCK)" '{ sub(/^.*\) /, ""); printf "%.2f", ($12 + $13) / hz }' "/proc/$1/stat" 2>/dev/null || echo 0
}

# wait_point_long N SECONDS: functions.sh's wait_replica_point (60 s) in a
# loop, for initial copies of large images
wait_point_long() {
	local n=$1 deadline=$(($(date +%s) + $2))
	until wait_replica_point "$n"; do
		[ "$(date +%s)" -lt "$deadline" ] || return 1
	done
}

# sites_up SIZE [FILL_FN]: functions.sh's sshd and two sites (site-a
# primary of web01, site-b DR), on a fresh sparse image of SIZE, optionally
# filled by FILL_FN IMAGE before replicad starts; returns once the initial
# copy is on the DR site (point 1).  INITIAL_SECS: how long that took.
sites_up() {
	T=$(mktemp -d "$TMPDIR/replicad-bench-sites.XXXXXX")
	start_sshd
	write_configs 1h 1h:all
	truncate -s "$1" "$T/a/web01.img"
	if [ -n "${2:-}" ]; then
		"$2" "$T/a/web01.img" || die "filling the image failed"
	fi
	sync "$T/a/web01.img"
	local t0
	t0=$(now)
	start_b
	start_a
	wait_point_long 1 "$CMD_TIMEOUT" || die "initial copy did not complete"
	INITIAL_SECS=$(secs "$t0" "$(now)")
}

# sites_down: stop both daemons and the sshd, remove the sites' temp dir
sites_down() {
	cleanup
	T= A_PID= B_PID= SSHD_PID=
}

PEER_PIDS=
peers_down() {
	local p
	for p in $PEER_PIDS; do kill "$p" 2>/dev/null || true; done
	for p in $PEER_PIDS; do wait "$p" 2>/dev/null || true; done
	PEER_PIDS=
}

# the EXIT trap of every benchmark subshell
bench_cleanup() {
	peers_down
	sites_down
}

# sshd2_up: a second sshd for the peers (the first one only lets in
# `replicad serve`: PermitRootLogin forced-commands-only and a forced
# command).  Same binary, host key and config as functions.sh's sshd but
# its own port and an authorized_keys with the same client key
# ($T/id_ed25519) and no forced command.  Sets PORT2 and SSH2 (an ssh
# command line for rsync -e).
sshd2_up() {
	PORT2=$(free_port)
	local d=$T/sshd2
	mkdir -p "$d"
	cut -d' ' -f1,2 "$T/id_ed25519.pub" >"$d/authorized_keys"
	echo "[127.0.0.1]:$PORT2 $(cut -d' ' -f1,2 "$T/host_key.pub")" >"$d/known_hosts"
	sed -e "s|^Port .*|Port $PORT2|" \
	    -e "s|^AuthorizedKeysFile .*|AuthorizedKeysFile $d/authorized_keys|" \
	    -e "s|^PidFile .*|PidFile $d/sshd.pid|" \
	    -e "s|^PermitRootLogin .*|PermitRootLogin prohibit-password|" \
	    "$T/sshd_config" >"$d/sshd_config"
	"$(command -v sshd)" -f "$d/sshd_config" -D -e 2>"$d/sshd.log" &
	PEER_PIDS="$PEER_PIDS $!"
	local _
	for _ in $(seq 50); do
		(exec 3<>/dev/tcp/127.0.0.1/"$PORT2") 2>/dev/null && break
		sleep 0.1
	done
	SSH2="ssh -F /dev/null -p $PORT2 -i $T/id_ed25519 -o IdentitiesOnly=yes -o BatchMode=yes -o UserKnownHostsFile=$d/known_hosts"
	$SSH2 root@127.0.0.1 true || die "second sshd: ssh to it fails ($(tail -n 3 "$d/sshd.log"))"
}

# rewrite URI SIZE_BYTES NBLOCKS SEED: NBLOCKS distinct 4 KiB blocks of the
# export rewritten at random with fresh random data (fio's random map makes
# them distinct), QD32, flushed at the end
# Each write's latency goes to a log with its completion time (unix epoch
# ms), so that io_span can tell when the first write was issued and the
# last one completed: fio itself takes about 0.25 s to start before its
# first write, time that is not the rewrite's.
rewrite() {
	rm -f "$BENCH_DIR"/rw_*.log
	fio --name=rewrite --ioengine=nbd --uri="$1" --rw=randwrite --bs=4k \
	    --iodepth=32 --size="$2" --io_size=$(($3 * 4096)) \
	    --randrepeat=1 --randseed="$4" --refill_buffers --end_fsync=1 \
	    --write_lat_log="$BENCH_DIR/rw" --log_unix_epoch=1 \
	    --output-format=json --output="$BENCH_DIR/rewrite.json" \
	    >"$BENCH_DIR/rewrite.err" 2>&1 ||
	    { cat "$BENCH_DIR/rewrite.err" >&2; return 1; }
}

# "FIRST LAST" of the last rewrite, in seconds since the epoch: when its
# first write was issued (completion less latency) and when its last
# write completed (the end_fsync's flush comes after).
io_span() {
	awk -F', *' 'NR == 1 || $1 - $2 / 1e6 < f { f = $1 - $2 / 1e6 }
	    $1 > l { l = $1 } END { printf "%.3f %.3f\n", f / 1000, l / 1000 }' \
	    "$BENCH_DIR/rw_lat.1.log"
}

# bench_cycle's rounds: one that started at t0 (fio's start) and ended at
# t2 adds its times to the caller's all, tails and fromfio, and leaves
# its first and last write in f and l
round_done() {
	read -r f l <<<"$(io_span)"
	all="$all $(secs "$f" "$t2")"
	tails="$tails $(secs "$l" "$t2")"
	fromfio="$fromfio $(secs "$t0" "$t2")"
}

fill_random() { head -c "$(stat -c %s "$1")" /dev/urandom | dd of="$1" bs=1M conv=notrunc status=none; }

# some data: 16 random extents of 1/128 of the disk (an eighth of it in all)
fill_some() {
	local size mb i
	size=$(stat -c %s "$1")
	mb=$((size / 128 / 1048576))
	for i in $(seq 0 15); do
		dd if=/dev/urandom of="$1" bs=1M count="$mb" seek=$((i * 8 * mb)) \
		    conv=notrunc status=none || return 1
	done
}

# fio_fig JSON: "IOPS MB/s" of the write side
fio_fig() {
	"$PY" -c 'import json,sys
w = json.load(open(sys.argv[1]))["jobs"][0]["write"]
print("%.0f %.1f" % (w["iops"], w["bw_bytes"] / 1e6))' "$1"
}

# ------------------------------------------------------------- benchmarks

# run_fio rand|seq URI TAG: prints "IOPS MB/s" or FAILED
run_fio() {
	local wl=$1 uri=$2 tag=$3 args
	case $wl in
	rand) args="--rw=randwrite --bs=4k --iodepth=32" ;;
	seq) args="--rw=write --bs=1M --iodepth=8" ;;
	esac
	# shellcheck disable=SC2086
	if fio --name="$tag-$wl" --ioengine=nbd --uri="$uri" $args \
	    --size="$NBD_SIZE" --runtime="$NBD_RUNTIME" --time_based \
	    --numjobs=1 --output-format=json \
	    --output="$BENCH_DIR/fio-$tag-$wl.json" \
	    >"$BENCH_DIR/fio-$tag-$wl.err" 2>&1; then
		fio_fig "$BENCH_DIR/fio-$tag-$wl.json"
	else
		sed 's/^/    fio: /' "$BENCH_DIR/fio-$tag-$wl.err" | tail -n 5 >&2
		echo "FAILED FAILED"
	fi
}

bench_nbd() {
	local wl r r2 r3 q k t0 t1 img sock pid js ca cb
	for wl in rand seq; do
		log "nbd $wl: replicad export (journaling, DR site up)"
		sites_up "$NBD_SIZE"
		ca=$(cpu_secs "$A_PID")
		cb=$(cpu_secs "$B_PID")
		r=$(run_fio "$wl" "$(URI_A)" replicad)
		js=$(ra --json status web01 | jget vms 0 journal_bytes)
		note nbd "replicad $wl: CPU used during the ${NBD_RUNTIME} s fio run: site-a daemon $(awk -v a="$ca" -v b="$(cpu_secs "$A_PID")" 'BEGIN { printf "%.1f", b - a }') s, site-b daemon $(awk -v a="$cb" -v b="$(cpu_secs "$B_PID")" 'BEGIN { printf "%.1f", b - a }') s (of $(nproc) CPUs x ${NBD_RUNTIME} s)"
		t0=$(now)
		if ra_long checkpoint web01 --wait >/dev/null; then
			note nbd "replicad $wl: after fio, the DR site caught up (checkpoint --wait) in $(secs "$t0" "$(now)") s; journal backlog at fio's end: $js bytes"
		else
			note nbd "replicad $wl: checkpoint --wait after fio FAILED"
		fi
		sites_down

		# the write path alone: journaling on, nothing shipping (the DR
		# site down, as during an outage)
		log "nbd $wl: replicad export (journaling, DR site down)"
		sites_up "$NBD_SIZE"
		stop_b
		r2=$(run_fio "$wl" "$(URI_A)" replicad-alone)
		sites_down

		# the same with the default quota: past it, the dirty map
		log "nbd $wl: replicad export (journal_max 25%, DR site down)"
		JOURNAL_MAX=25% sites_up "$NBD_SIZE"
		stop_b
		r3=$(run_fio "$wl" "$(URI_A)" replicad-quota)
		note nbd "replicad $wl, journal_max 25%, DR site down: state $(ra --json status web01 | jget vms 0 state) at fio's end, journal $(ra --json status web01 | jget vms 0 journal_bytes) bytes, dirty map $(ra --json status web01 | jget vms 0 dirty_bytes) bytes"
		sites_down

		img=$BENCH_DIR/peer.img
		sock=$BENCH_DIR/peer.sock
		log "nbd $wl: qemu-nbd"
		rm -f "$img" "$sock"
		truncate -s "$NBD_SIZE" "$img"
		qemu-nbd -f raw -k "$sock" -t "$img" 2>"$BENCH_DIR/qemu-nbd.log" &
		pid=$!
		PEER_PIDS=$pid
		wait_sock "$sock" "$pid" || die "qemu-nbd did not start: $(cat "$BENCH_DIR/qemu-nbd.log")"
		q=$(run_fio "$wl" "nbd+unix:///?socket=$sock" qemu-nbd)
		peers_down

		log "nbd $wl: nbdkit file"
		rm -f "$img" "$sock"
		truncate -s "$NBD_SIZE" "$img"
		nbdkit -f -U "$sock" file "$img" 2>"$BENCH_DIR/nbdkit.log" &
		pid=$!
		PEER_PIDS=$pid
		wait_sock "$sock" "$pid" || die "nbdkit did not start: $(cat "$BENCH_DIR/nbdkit.log")"
		k=$(run_fio "$wl" "nbd+unix:///?socket=$sock" nbdkit)
		peers_down
		rm -f "$img"

		local what
		if [ "$wl" = rand ]; then what="4 KiB randwrite QD32"; else what="1 MiB seq write QD8"; fi
		result nbd "$what" IOPS "${r% *}" "qemu-nbd -t (cache=writeback)" "${q% *}"
		result nbd "$what" IOPS "${r% *}" "nbdkit file" "${k% *}"
		result nbd "$what" MB/s "${r#* }" "qemu-nbd -t (cache=writeback)" "${q#* }"
		result nbd "$what" MB/s "${r#* }" "nbdkit file" "${k#* }"
		result nbd "$what, DR site down" IOPS "${r2% *}" "qemu-nbd -t (cache=writeback)" "${q% *}"
		result nbd "$what, DR site down" MB/s "${r2#* }" "qemu-nbd -t (cache=writeback)" "${q#* }"
		result nbd "$what, DR site down, journal_max 25%" IOPS "${r3% *}" "qemu-nbd -t (cache=writeback)" "${q% *}"
		result nbd "$what, DR site down, journal_max 25%" MB/s "${r3#* }" "qemu-nbd -t (cache=writeback)" "${q#* }"
	done
	note nbd "fio --ioengine=nbd, numjobs 1, --size=$NBD_SIZE --runtime=$NBD_RUNTIME --time_based; each target on a fresh sparse $NBD_SIZE raw file in $TMPDIR; MB = 10^6 bytes"
}

bench_ssh() {
	local data=$BENCH_DIR/ssh.data n t0 t1 t2 sh0 sh1 ours out cipher cyc fig
	n=$(bytes_of "$SSH_SIZE")
	log "ssh: $SSH_SIZE of random data"
	head -c "$n" /dev/urandom >"$data"
	cc -O2 -Wall -o "$BENCH_DIR/ssh_push" "$HERE/ssh_push.c" -lssh2 ||
	    die "cannot compile bench/ssh_push.c (libssh2-dev?)"

	sites_up "$SSH_SIZE"
	sh0=$(ra --json status web01 | jget vms 0 bytes_shipped)
	log "ssh: replicad: nbdcopy into the export, then checkpoint --wait"
	t0=$(now)
	nbdcopy "$data" "$(URI_A)" || die "nbdcopy failed"
	t1=$(now)
	ra_long checkpoint web01 --wait >/dev/null || die "checkpoint --wait failed"
	t2=$(now)
	sh1=$(ra --json status web01 | jget vms 0 bytes_shipped)
	ours=$(mbps "$n" "$(secs "$t0" "$t2")")
	note ssh "replicad: nbdcopy write $(secs "$t0" "$t1") s, then checkpoint --wait $(secs "$t1" "$t2") s, total $(secs "$t0" "$t2") s; bytes_shipped grew by $((sh1 - sh0)) (payload, before zstd)"
	dr_settled
	if cmp -s "$T/a/web01.img" "$T/b/replicas/web01/web01.img"; then
		note ssh "replicad: DR replica equals the primary after the point: OK"
	else
		note ssh "replicad: DR replica equals the primary after the point: MISMATCH"
	fi

	# The cycle alone: written while the DR site is away, shipped (and
	# applied) when it is back: journal -> SSH -> DR durable point.
	log "ssh: replicad: the same amount journaled with the DR site down, then shipped"
	# its writeback is over before the outage ends (the peers run on a
	# quiet disk too)
	journal_while_down "$n" || die "writing while the DR site is down failed"
	t0=$(now)
	ra_long checkpoint web01 --wait >/dev/null || die "checkpoint --wait failed"
	t1=$(now)
	cyc=$(mbps "$n" "$(secs "$t0" "$t1")")
	note ssh "replicad cycle alone: $(secs "$t0" "$t1") s from the link coming back to the point durable on the DR site (ship over SSH, apply with undo records, fsync; the primary's page cache written back before the DR site starts)"
	dr_settled
	if cmp -s "$T/a/web01.img" "$T/b/replicas/web01/web01.img"; then
		note ssh "replicad cycle alone: DR replica equals the primary: OK"
	else
		note ssh "replicad cycle alone: DR replica equals the primary: MISMATCH"
	fi
	stop_a
	stop_b

	sshd2_up
	log "ssh: libssh2 exec channel"
	if out=$("$BENCH_DIR/ssh_push" 127.0.0.1 "$PORT2" root "$T/id_ed25519" "$data"); then
		fig=$(echo "$out" | cut -d' ' -f3)
		result ssh "$SSH_SIZE cycle, journal to durable DR point" MB/s "$cyc" "libssh2 exec 'cat >/dev/null'" "$fig"
		result ssh "$SSH_SIZE written through NBD to durable DR point" MB/s "$ours" "libssh2 exec 'cat >/dev/null'" "$fig"
		note ssh "libssh2 (blocking, default prefs) negotiated: kex $(echo "$out" | cut -d' ' -f4), cipher $(echo "$out" | cut -d' ' -f5), mac $(echo "$out" | cut -d' ' -f6); $(echo "$out" | cut -d' ' -f2) s"
	else
		result ssh "$SSH_SIZE random data shipped" MB/s "$ours" "libssh2 exec 'cat >/dev/null'" FAILED
	fi
	log "ssh: OpenSSH"
	t0=$(now)
	if $SSH2 -v root@127.0.0.1 'cat >/dev/null' <"$data" 2>"$BENCH_DIR/ssh.err"; then
		t1=$(now)
		fig=$(mbps "$n" "$(secs "$t0" "$t1")")
		result ssh "$SSH_SIZE cycle, journal to durable DR point" MB/s "$cyc" "OpenSSH ssh 'cat >/dev/null'" "$fig"
		result ssh "$SSH_SIZE written through NBD to durable DR point" MB/s "$ours" "OpenSSH ssh 'cat >/dev/null'" "$fig"
		cipher=$(grep -m1 'kex: client->server cipher' "$BENCH_DIR/ssh.err" | tr -d '\r' | sed 's/.*cipher: //')
		note ssh "OpenSSH $(ssh -V 2>&1 | cut -d, -f1) negotiated: $cipher; $(secs "$t0" "$t1") s"
	else
		result ssh "$SSH_SIZE random data shipped" MB/s "$ours" "OpenSSH ssh 'cat >/dev/null'" FAILED
	fi
	note ssh "data: $SSH_SIZE from /dev/urandom (incompressible; replicad still runs zstd, compress = zstd as in functions.sh); peers on a second sshd (same binary, host key, client key), replicad's link over functions.sh's sshd; all on 127.0.0.1"
	rm -f "$data"
}

bench_cycle() {
	local n nblk t0 t1 t2 ours r1 r2 sh0 sh1 d1 d2 st
	n=$(bytes_of "$CYCLE_SIZE")
	nblk=$((n / 4096 * CYCLE_PCT / 100))
	log "cycle: $CYCLE_SIZE image of random data, initial copy"
	sites_up "$CYCLE_SIZE" fill_random
	note cycle "replicad initial copy of $CYCLE_SIZE of random data: $INITIAL_SECS s ($(mbps "$n" "$INITIAL_SECS") MB/s)"
	# CYCLE_REPEAT - 1 rounds on other blocks first: the figures are the
	# medians of all rounds (this machine's disk varies from run to run)
	# Timed from the first write (io_span), not from fio's start, and
	# the tail from the last write's completion; the figure from fio's
	# start is kept in a note.
	local k all="" tails="" tail fromfio="" f l
	for k in $(seq 2 "$CYCLE_REPEAT"); do
		log "cycle: round $k of $CYCLE_REPEAT (other blocks)"
		t0=$(now)
		rewrite "$(URI_A)" "$n" "$nblk" $((40 + k)) || die "rewrite failed"
		ra_long checkpoint web01 --wait >/dev/null || die "checkpoint --wait failed"
		t2=$(now)
		round_done
	done
	d1=$BENCH_DIR/dst1
	d2=$BENCH_DIR/dst2
	mkdir -p "$d1" "$d2"
	cp "$T/a/web01.img" "$d1/web01.img"
	cp "$T/a/web01.img" "$d2/web01.img"
	sync

	log "cycle: rewrite $nblk random 4 KiB blocks ($CYCLE_PCT%), then checkpoint --wait"
	sh0=$(ra --json status web01 | jget vms 0 bytes_shipped)
	t0=$(now)
	rewrite "$(URI_A)" "$n" "$nblk" 42 || die "rewrite failed"
	t1=$(now)
	ra_long checkpoint web01 --wait >/dev/null || die "checkpoint --wait failed"
	t2=$(now)
	# the point is durable once logged on the DR site; its apply to the
	# replica image follows, and a command there waits for it
	dr_settled
	t3=$(now)
	sh1=$(ra --json status web01 | jget vms 0 bytes_shipped)
	round_done
	note cycle "replicad: the DR site's replica image held the point $(secs "$t2" "$t3") s after checkpoint --wait returned (replica points on the DR site, which applies a point logged ahead of its apply first)"
	ours=$(median $all)
	tail=$(median $tails)
	note cycle "replicad: fio started, its first write $(secs "$t0" "$f") s later, its last write completed $(secs "$f" "$l") s after that, fio exited $(secs "$l" "$t1") s later (end_fsync), checkpoint --wait $(secs "$t1" "$t2") s; bytes_shipped grew by $((sh1 - sh0))"
	note cycle "replicad, $CYCLE_REPEAT rounds: first write to durable point:$all s (median $ours); last write to durable point:$tails s (median $tail); from fio's start:$fromfio s (median $(median $fromfio))"
	dr_settled
	if cmp -s "$T/a/web01.img" "$T/b/replicas/web01/web01.img"; then st=OK; else st=MISMATCH; fi
	note cycle "replicad: DR replica equals the changed primary: $st"
	stop_a
	stop_b

	sshd2_up
	log "cycle: rsync --inplace --no-whole-file (default block size)"
	t0=$(now)
	rsync --inplace --no-whole-file -I --stats -e "$SSH2" "$T/a/web01.img" \
	    "root@127.0.0.1:$d1/web01.img" >"$BENCH_DIR/rsync1.log" 2>&1 ||
	    { tail "$BENCH_DIR/rsync1.log" >&2; r1=FAILED; }
	t1=$(now)
	[ "${r1:-}" = FAILED ] || r1=$(secs "$t0" "$t1")
	log "cycle: rsync --inplace --no-whole-file -B 4096"
	t0=$(now)
	rsync --inplace --no-whole-file -I -B 4096 --stats -e "$SSH2" "$T/a/web01.img" \
	    "root@127.0.0.1:$d2/web01.img" >"$BENCH_DIR/rsync2.log" 2>&1 ||
	    { tail "$BENCH_DIR/rsync2.log" >&2; r2=FAILED; }
	t1=$(now)
	[ "${r2:-}" = FAILED ] || r2=$(secs "$t0" "$t1")
	result cycle "$CYCLE_PCT% of 4 KiB blocks of $CYCLE_SIZE rewritten" s "$ours" "rsync --inplace --no-whole-file" "$r1"
	result cycle "$CYCLE_PCT% of 4 KiB blocks of $CYCLE_SIZE rewritten" s "$ours" "rsync --inplace --no-whole-file -B 4096" "$r2"
	result cycle "$CYCLE_PCT% of $CYCLE_SIZE rewritten: last write to durable point" s "$tail" "rsync --inplace --no-whole-file" "$r1"
	result cycle "$CYCLE_PCT% of $CYCLE_SIZE rewritten: last write to durable point" s "$tail" "rsync --inplace --no-whole-file -B 4096" "$r2"
	for f in 1 2; do
		local dst=$d1 b="default block"
		[ $f = 2 ] && { dst=$d2; b="-B 4096"; }
		if cmp -s "$T/a/web01.img" "$dst/web01.img"; then st=OK; else st=MISMATCH; fi
		note cycle "rsync $b: $(grep -E '^Total bytes sent' "$BENCH_DIR/rsync$f.log" | tr -s ' '); $(grep -E '^Literal data' "$BENCH_DIR/rsync$f.log" | tr -s ' '); destination equals the changed image: $st"
	done
	note cycle "replicad: from the rewrite's first write through the NBD export (or from the completion of its last write) until checkpoint --wait returns, fio's end_fsync included; rsync: the transfer alone (over a second sshd, -I so the quick check cannot skip; the rewrite is not in its figure)"
	rm -rf "$d1" "$d2"

	# An outage past the journal quota: the same amount of change (other
	# blocks) arrives as a catch-up from the dirty map.
	log "cycle: DR site down, $CYCLE_PCT% rewritten past journal_max 16M, then the catch-up"
	sed -i 's/^journal_max = .*/journal_max = 16M/' "$T/a.conf"
	start_b
	start_a
	ra_long checkpoint web01 --wait >/dev/null || die "checkpoint --wait failed"
	local lp0 lp js db
	lp0=$(rb --json status web01 | jget vms 0 last_point)
	stop_b
	rewrite "$(URI_A)" "$n" "$nblk" 43 || die "rewrite failed"
	js=$(ra --json status web01 | jget vms 0 state)
	db=$(ra --json status web01 | jget vms 0 dirty_bytes)
	sh0=$(ra --json status web01 | jget vms 0 bytes_shipped)
	start_b
	t0=$(now)
	# the primary finds the DR site back at its next reconnect attempt
	# (backoff from 0.5 s, doubling): the catch-up is timed from there
	tl=
	for _ in $(seq 6000); do
		if [ -z "$tl" ] && [ "$(ra --json status web01 2>/dev/null | jget vms 0 link 2>/dev/null)" = ready ]; then
			tl=$(now)
		fi
		lp=$(rb --json status web01 2>/dev/null | jget vms 0 last_point 2>/dev/null || echo 0)
		[ "${lp:-0}" -gt "$lp0" ] && break
		sleep 0.02
	done
	t1=$(now)
	tl=${tl:-$t0}
	sh1=$(ra --json status web01 | jget vms 0 bytes_shipped)
	stop_a
	dr_settled
	if cmp -s "$T/a/web01.img" "$T/b/replicas/web01/web01.img"; then st=OK; else st=MISMATCH; fi
	result cycle "outage past journal_max: catch-up of $CYCLE_PCT% of 4 KiB blocks of $CYCLE_SIZE, from the link back" s "$(secs "$tl" "$t1")" "rsync --inplace --no-whole-file -B 4096" "$r2"
	note cycle "replicad outage: state $js after the rewrite, dirty map $db bytes; from the DR site's start to the catch-up point on it $(secs "$t0" "$t1") s, of which $(secs "$t0" "$tl") s until the primary's next reconnect attempt found it; bytes_shipped grew by $((sh1 - sh0)); DR replica equals the primary: $st"
}

bench_failover() {
	local size n nblk i id L tgt sum1 sumL t0 t1 fo path got st sz
	for size in $FAILOVER_SIZES; do
		n=$(bytes_of "$size")
		nblk=$((n / 4096 * FAILOVER_PCT / 100))
		log "failover $size: image (an eighth random data), initial copy"
		sites_up "$size" fill_some
		note failover "$size: initial copy ($((n / 8 / 1048576)) MiB of random data in 16 extents, rest sparse) $INITIAL_SECS s"
		sum1=$(sha "$T/a/web01.img")
		t0=$(now)
		for i in $(seq "$FAILOVER_POINTS"); do
			rewrite "$(URI_A)" "$n" "$nblk" "$i" || die "rewrite $i failed"
			id=$(ra_long checkpoint web01 --wait) || die "checkpoint --wait failed"
		done
		L=$id
		tgt=$((L - FAILOVER_POINTS))
		note failover "$size: $FAILOVER_POINTS cycles of $nblk random 4 KiB blocks ($FAILOVER_PCT%), each with checkpoint --wait: $(secs "$t0" "$(now)") s; points 1..$L"
		sumL=$(sha "$T/a/web01.img")
		stop_a	# the primary site is lost

		for p in latest "$tgt"; do
			local want=$sumL wid=$L label="latest point ($L)"
			[ "$p" = latest ] || { want=$sum1; wid=$tgt; label="point $tgt ($FAILOVER_POINTS back)"; }
			log "failover $size: --point $p"
			t0=$(now)
			if rb_long --json failover web01 --point "$p" >"$BENCH_DIR/fo.json" 2>"$BENCH_DIR/fo.err"; then
				t1=$(now)
				path=$(jget disks 0 path <"$BENCH_DIR/fo.json")
				got=$(jget point <"$BENCH_DIR/fo.json")
				if [ "$got" = "$wid" ] && [ "$(sha "$path")" = "$want" ]; then st=OK; else st=MISMATCH; fi
				result failover "$size failover to $label, sha256 $st" ms "$(ms "$t0" "$t1")" - -
			else
				result failover "$size failover to $label" ms FAILED - -
				note failover "$size failover --point $p: $(cat "$BENCH_DIR/fo.err")"
				continue
			fi
			t0=$(now)
			if rb_long cancel web01 >/dev/null 2>"$BENCH_DIR/fo.err"; then
				result failover "$size cancel after failover to $label" ms "$(ms "$t0" "$(now)")" - -
			else
				result failover "$size cancel after failover to $label" ms FAILED - -
				note failover "$size cancel: $(cat "$BENCH_DIR/fo.err")"
			fi
		done
		if [ "$(sha "$T/b/replicas/web01/web01.img")" = "$sumL" ]; then st=OK; else st=MISMATCH; fi
		note failover "$size: after the cancels the replica holds the latest point again: $st"

		log "failover $size: peer: full copy of the image"
		t0=$(now)
		cp --sparse=always "$T/b/replicas/web01/web01.img" "$BENCH_DIR/restore.img"
		t1=$(now)
		sz=$(du -m "$BENCH_DIR/restore.img" | cut -f1)
		rm -f "$BENCH_DIR/restore.img"
		result failover "$size restore by full image copy" ms - "cp --sparse=always of the image (${sz} MiB allocated)" "$(ms "$t0" "$t1")"
		sites_down
	done
	note failover "failover/cancel: wall time of \`replica failover web01 --point N\` / \`replica cancel web01\` on the DR site with site-a stopped; sha256 of the failed-over disk path vs the primary's image when that point was cut"
}

# ------------------------------------------------------------------- main

[ "$(id -u)" = 0 ] || { echo "bench/run.sh: needs root (sshd)" >&2; exit 1; }
[ -x "$BIN/replicad" ] && [ -x "$BIN/replica" ] ||
    { echo "bench/run.sh: build first: cmake -S . -B build && cmake --build build" >&2; exit 1; }
for t in fio qemu-nbd nbdkit nbdcopy rsync ssh sshd cc; do
	command -v "$t" >/dev/null || { echo "bench/run.sh: $t not found" >&2; exit 1; }
done

WHICH=("$@")
[ ${#WHICH[@]} -eq 0 ] && WHICH=(all)
LIST=()
for w in "${WHICH[@]}"; do
	case $w in
	all) LIST+=(nbd ssh cycle failover) ;;
	nbd | ssh | cycle | failover) LIST+=("$w") ;;
	*) usage ;;
	esac
done

BT=$(mktemp -d "$TMPDIR/replicad-bench.XXXXXX")
: >"$BT/results.tsv"
: >"$BT/notes.tsv"
CUR=
main_cleanup() {
	if [ -n "$CUR" ]; then
		kill -TERM -- "-$CUR" 2>/dev/null || kill -TERM "$CUR" 2>/dev/null
		wait "$CUR" 2>/dev/null
	fi
	rm -rf "$BT"
}
trap main_cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

START=$(now)
LOAD0=$(cut -d' ' -f1-3 /proc/loadavg)
set -m	# each benchmark in its own process group, so an interrupt reaches it all
for b in "${LIST[@]}"; do
	log "=== $b"
	(
		set +m
		BENCH_DIR=$BT/$b
		mkdir -p "$BENCH_DIR"
		trap bench_cleanup EXIT
		trap 'exit 143' TERM
		trap 'exit 130' INT
		"bench_$b"
	) </dev/null &
	CUR=$!
	wait "$CUR"
	rc=$?
	CUR=
	[ "$rc" -eq 0 ] || note "$b" "benchmark FAILED (exit $rc); its rows may be missing, see the output above"
done
set +m
END=$(now)

"$PY" "$HERE/report.py" "$BT/results.tsv" "$BT/notes.tsv" \
    "$(secs "$START" "$END")" "$LOAD0" "$(cut -d' ' -f1-3 /proc/loadavg)" \
    "$(qemu-nbd --version | head -1)" "$(nbdkit --version)" "$(fio --version)" \
    "$(rsync --version | head -1 | awk '{print $1, $3}')" "$(ssh -V 2>&1 | cut -d, -f1)" \
    "$(dpkg-query -W -f '${Version}' libssh2-1 2>/dev/null || echo '?')" \
    "$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')"
