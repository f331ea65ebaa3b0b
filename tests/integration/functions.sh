# functions.sh: shared set-up for integration tests and the demo: a temp
# dir, a private OpenSSH sshd on 127.0.0.1 standing for the WAN, and two
# replicad sites (site-a primary, site-b DR) configured to replicate vm
# web01 over it.  Source it, then call two_sites_setup.
#
# Needs: BIN (dir with replicad and replica), run as root (sshd privsep).

BIN=${BIN:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../../build/bin" && pwd)}
export PATH="/usr/bin:/bin:/usr/sbin:/sbin:$PATH"
T=
SSHD_PID=
A_PID=
B_PID=
pass=0
fail=0

cleanup() {
	for p in $A_PID $B_PID $SSHD_PID; do
		kill "$p" 2>/dev/null || true
	done
	for p in $A_PID $B_PID $SSHD_PID; do
		wait "$p" 2>/dev/null || true
	done
	if [ -n "$T" ] && [ -z "${KEEP_TMP:-}" ]; then
		rm -rf "$T"
	fi
}

ok() {
	echo "ok   $*"
	pass=$((pass + 1))
}

not_ok() {
	echo "FAIL $*"
	fail=$((fail + 1))
}

# check NAME COMMAND...: run it, count it.
check() {
	local name=$1
	shift
	if "$@" >"$T/check.out" 2>&1; then
		ok "$name"
	else
		not_ok "$name"
		sed 's/^/    | /' "$T/check.out" | tail -n 20
	fi
}

finish() {
	# stop the daemons so a sanitizer build reports leaks, then look
	[ -n "$A_PID" ] && stop_a
	[ -n "$B_PID" ] && stop_b
	if grep -lE 'Sanitizer|runtime error' "$T"/a.log "$T"/b.log 2>/dev/null; then
		not_ok "sanitizer reports in daemon logs"
		grep -hE -A15 'Sanitizer|runtime error' "$T"/a.log "$T"/b.log | head -40
	fi
	echo "$pass passed, $fail failed"
	[ "$fail" -eq 0 ]
}

die() {
	echo "FAIL $*"
	for f in "$T"/a.log "$T"/b.log "$T"/sshd.log; do
		[ -f "$f" ] && { echo "--- $f"; tail -n 30 "$f"; }
	done
	echo "$pass passed, $((fail + 1)) failed"
	exit 1
}

free_port() {
	python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# start_sshd: host key, client key, authorized_keys with the forced command.
start_sshd() {
	PORT=$(free_port)
	mkdir -p /run/sshd
	ssh-keygen -q -t ed25519 -N '' -f "$T/host_key"
	ssh-keygen -q -t ed25519 -N '' -f "$T/id_ed25519" -C site-a
	echo "[127.0.0.1]:$PORT $(cut -d' ' -f1,2 "$T/host_key.pub")" >"$T/known_hosts"
	echo "restrict,command=\"$BIN/replicad serve -c $T/b.conf --peer site-a\" $(cat "$T/id_ed25519.pub")" >"$T/authorized_keys"
	cat >"$T/sshd_config" <<EOC
Port $PORT
ListenAddress 127.0.0.1
HostKey $T/host_key
AuthorizedKeysFile $T/authorized_keys
PidFile $T/sshd.pid
StrictModes no
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
PermitRootLogin forced-commands-only
PubkeyAuthentication yes
LogLevel ERROR
EOC
	"$(command -v sshd)" -f "$T/sshd_config" -D -e 2>"$T/sshd.log" &
	SSHD_PID=$!
	for _ in $(seq 50); do
		(exec 3<>/dev/tcp/127.0.0.1/"$PORT") 2>/dev/null && return 0
		sleep 0.1
	done
	die "sshd did not start"
}

# write_configs [INTERVAL] [KEEP]; JOURNAL_MAX (default 1G, so that tests
# of the journal path stay on it) sets site-a's journal quota, BANDWIDTH
# (default 0: none) its shipping cap
write_configs() {
	local interval=${1:-1h} keep=${2:-1h:all}
	mkdir -p "$T/a" "$T/b"
	cat >"$T/a.conf" <<EOC
[site]
name = site-a
state_dir = $T/a/state
control = $T/a/control.sock
nbd = $T/a/nbd.sock

[peer site-b]
host = 127.0.0.1
port = $PORT
user = root
key = $T/id_ed25519
known_hosts = $T/known_hosts

[vm web01]
disk = $T/a/web01.img
replicate_to = site-b
interval = $interval
keep = $keep
compress = zstd
journal_max = ${JOURNAL_MAX:-1G}
bandwidth = ${BANDWIDTH:-0}
EOC
	cat >"$T/b.conf" <<EOC
[site]
name = site-b
state_dir = $T/b/state
control = $T/b/control.sock
nbd = $T/b/nbd.sock
ssh_port = $PORT

[accept site-a]
storage = $T/b/replicas
from = 127.0.0.1
EOC
}

start_a() {
	rm -f "$T/a/control.sock"	# a killed daemon leaves its socket
	"$BIN/replicad" -d -c "$T/a.conf" >>"$T/a.log" 2>&1 &
	A_PID=$!
	wait_sock "$T/a/control.sock" "$A_PID" || die "site-a did not start"
}

start_b() {
	rm -f "$T/b/control.sock"
	"$BIN/replicad" -d -c "$T/b.conf" >>"$T/b.log" 2>&1 &
	B_PID=$!
	wait_sock "$T/b/control.sock" "$B_PID" || die "site-b did not start"
}

wait_sock() {
	for _ in $(seq 100); do
		[ -S "$1" ] && return 0
		kill -0 "$2" 2>/dev/null || return 1
		sleep 0.05
	done
	return 1
}

stop_a() { kill "$A_PID"; wait "$A_PID" || true; A_PID=; }
# journal_while_down BYTES: BYTES of random data written through site-a's
# export while site-b is down (journaled, not shipped), written back to
# disk, then site-b started; returns once web01 is replicating again, the
# moment the shipping of that journal starts (bench/run.sh, bench/pair.sh)
journal_while_down() {
	local _
	stop_b
	head -c "$1" /dev/urandom >"$T/outage.data"
	nbdcopy "$T/outage.data" "$(URI_A)" || { rm -f "$T/outage.data"; return 1; }
	rm -f "$T/outage.data"
	# the writing is over before the outage ends: its writeback is not
	# part of the shipping
	sync
	start_b
	for _ in $(seq 600); do
		[ "$(ra --json status web01 | jget vms 0 state)" = replicating ] && return 0
		sleep 0.05
	done
	return 1
}

stop_b() { kill "$B_PID"; wait "$B_PID" || true; B_PID=; }
crash_a() { kill -9 "$A_PID"; wait "$A_PID" 2>/dev/null || true; A_PID=; }
crash_b() { kill -9 "$B_PID"; wait "$B_PID" 2>/dev/null || true; B_PID=; }

# bounded, so a hang fails the test instead of stalling it
ra() { timeout 120 "$BIN/replica" -c "$T/a.conf" "$@"; }
rb() { timeout 120 "$BIN/replica" -c "$T/b.conf" "$@"; }
# The DR site's image of VM (web01) holds its latest point: a point that
# was logged and acknowledged ahead of its apply is applied first by any
# command about it on the DR site.
dr_settled() { rb points "${1:-web01}" >/dev/null; }

URI_A() { echo "nbd+unix:///web01/web01?socket=$T/a/nbd.sock"; }

# jget FIELD...: read JSON on stdin, print a field path (python).
jget() {
	python3 -c 'import json,sys
d=json.load(sys.stdin)
for k in sys.argv[1:]:
    d=d[int(k)] if isinstance(d,list) else d[k]
print(d)' "$@"
}

# wait_point VM N: until the DR site lists point N (or later).
wait_replica_point() {
	local n=$1
	for _ in $(seq 600); do
		local lp
		lp=$(rb --json status web01 2>/dev/null | jget vms 0 last_point 2>/dev/null || echo 0)
		[ "${lp:-0}" -ge "$n" ] && return 0
		sleep 0.1
	done
	return 1
}

# fo_check POINT EXPECTED_IMAGE WHAT: fail web01 over to POINT on the DR
# site, check the disk equals EXPECTED_IMAGE, and cancel.
fo_check() {
	rb --json failover web01 --point "$1" >"$T/fo.json"
	check "$3" cmp "$2" "$(jget disks 0 path <"$T/fo.json")"
	rb cancel web01 >/dev/null
}

# settle VM: cut a point and wait until the DR site holds it.  A point is
# refused while a catch-up is under way, so this retries for up to 2 min.
settle() {
	local _
	for _ in $(seq 240); do
		ra checkpoint "$1" --wait >/dev/null 2>&1 && return 0
		sleep 0.5
	done
	return 1
}

# two_sites_setup SIZE [INTERVAL] [KEEP]: sshd, configs, a disk with some
# data and holes, both daemons, initial copy done (point 1 on the DR).
two_sites_setup() {
	local size=$1
	T=$(mktemp -d "${TMPDIR:-/tmp}/replicad-test.XXXXXX")
	trap cleanup EXIT
	start_sshd
	write_configs "${2:-1h}" "${3:-1h:all}"
	truncate -s "$size" "$T/a/web01.img"
	# some data before protection began, and holes
	dd if=/dev/urandom of="$T/a/web01.img" bs=64K count=16 seek=3 conv=notrunc status=none
	start_b
	start_a
	wait_replica_point 1 || die "initial copy did not complete"
}
