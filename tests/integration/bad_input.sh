#!/bin/bash
# bad_input.sh: wrong peers, unknown and changed host keys, hostile frames
# on the DR site's `replicad serve`, a DR site without room: each gets a
# clear error naming the cause, nothing is lost, the daemons keep running.
set -euo pipefail
. "$(dirname "$0")/functions.sh"

two_sites_setup 32M
URI=$(URI_A)
HERE=$(cd "$(dirname "$0")" && pwd)
PY=/usr/bin/python3

alive() { kill -0 "$A_PID" && kill -0 "$B_PID"; }
link_state() { ra --json status web01 | jget vms 0 link; }
wait_link() {	# wait_link PATTERN
	for _ in $(seq 100); do
		link_state | grep -q "$1" && return 0
		sleep 0.1
	done
	link_state
	return 1
}

# --- outages and dropped links ----------------------------------------
stop_b
qemu-io -f raw -c "write -P 0x5a 2M 3M" "$URI" >/dev/null
sleep 5		# several reconnect attempts fail meanwhile
start_b
id=$(ra checkpoint web01 --wait) || die "no point after a DR outage"
check "after a DR outage the primary reconnects and point $id holds the writes" sh -c "
	$BIN/replica -c $T/b.conf --json failover web01 --point $id >$T/fo.json &&
	cmp $T/a/web01.img $T/b/replicas/web01/web01.img &&
	$BIN/replica -c $T/b.conf cancel web01 >/dev/null"
qemu-io -f raw -c "write -P 0x5b 6M 2M" "$URI" >/dev/null
pkill -KILL -f "sshd: root@notty" || true	# the link's SSH session dies
id=$(ra checkpoint web01 --wait) || die "no point after a dropped link"
dr_settled
check "after a dropped SSH session nothing is lost or applied twice (point $id)" \
	cmp "$T/a/web01.img" "$T/b/replicas/web01/web01.img"

# --- host keys ---------------------------------------------------------
cp "$T/known_hosts" "$T/known_hosts.good"
ssh-keygen -q -t ed25519 -N '' -f "$T/other_key"
echo "[127.0.0.1]:$PORT $(cut -d' ' -f1,2 "$T/other_key.pub")" >"$T/known_hosts"
stop_a; start_a
check "a changed host key refuses the connection, named" wait_link "CHANGED"
echo "[127.0.0.2]:$PORT $(cut -d' ' -f1,2 "$T/host_key.pub")" >"$T/known_hosts"
stop_a; start_a
check "an unknown host key refuses the connection, named" wait_link "unknown"
jb0=$(ra --json status web01 | jget vms 0 journal_bytes)
qemu-io -f raw -c "write -P 0x61 1M 1M" "$URI" >/dev/null
jb1=$(ra --json status web01 | jget vms 0 journal_bytes)
check "the primary journals writes while it cannot ship ($jb0 -> $jb1)" \
	test "$jb1" -ge $((jb0 + 1048576))
cp "$T/known_hosts.good" "$T/known_hosts"
stop_a; start_a
id=$(ra checkpoint web01 --wait)
check "with the right key it resumes and the point holds the writes" sh -c "
	$BIN/replica -c $T/b.conf --json failover web01 --point $id >$T/fo.json &&
	cmp $T/a/web01.img \$($PY -c 'import json;print(json.load(open(\"$T/fo.json\"))[\"disks\"][0][\"path\"])') &&
	$BIN/replica -c $T/b.conf cancel web01 >/dev/null"

# --- wrong peer --------------------------------------------------------
sed -i "s/--peer site-a/--peer site-x/" "$T/authorized_keys"
stop_a; start_a
check "a key that belongs to another peer is refused, named" wait_link "accepts no replication from 'site-x'"
sed -i "s/--peer site-x/--peer site-a/" "$T/authorized_keys"
stop_a; start_a
check "back with its own key: link ready" wait_link "ready"

# --- hostile frames straight into `replicad serve` ---------------------
points_before=$(rb --json points web01)
serve() {	# serve PYTHON-EXPR: feed frames, print what came back
	$PY -c "import sys; sys.path.insert(0, '$HERE'); from frames import *; sys.stdout.buffer.write($1)" |
		timeout 10 "$BIN/replicad" serve -c "$T/b.conf" --peer site-a 2>&1 | tr -c '[:print:]\n' ' '
}
hostile() {	# hostile NAME EXPECTED PYTHON-EXPR
	local out
	out=$(serve "$3")
	if echo "$out" | grep -q "$2" && alive; then
		ok "hostile: $1"
	else
		not_ok "hostile: $1 (wanted '$2', got '$out')"
	fi
}
hostile "length over the cap" "over the" 'b"\xff\xff\xff\xff\x00\x01\x00\x00" + b"x" * 64'
hostile "unknown flags" "unknown frame flags" 'hello("site-a", 1)[:6] + b"\x00\x80" + hello("site-a", 1)[8:]'
hostile "garbage payload" "malformed" 'b"\x00\x00\x00\x10\x00\x01\x00\x00" + b"\xff" * 16'
hostile "type and body disagree" "does not match" 'frame("hello", f_int(1, 1), type_=5)'
hostile "no hello first" "expected hello" 'writes("web01", [])'
hostile "another site's name" "uses the key of peer" 'hello("site-z")'
hostile "another protocol" "protocol 7" 'hello("site-a", 7)'
hostile "path in a vm name" "bad vm name" 'hello("site-a") + announce("../../etc", [("d", 4096)], 3)'
hostile "disk of size zero" "bad disk" 'hello("site-a") + announce("evil", [("d", 0)], 3)'
hostile "out-of-range offset" "beyond disk" 'hello("site-a") + announce("evil", [("d", 1 << 20)], 3) + sync_done("evil", 0) + writes("evil", [entry(1, 0, (1 << 20) - 4096, 8192, b"y" * 8192)])'
hostile "offset that wraps" "beyond disk" 'hello("site-a") + announce("evil", [("d", 1 << 20)], 3) + sync_done("evil", 0) + writes("evil", [entry(1, 0, (1 << 64) - 4096, 8192, b"y" * 8192)])'
hostile "disk index out of range" "out of range" 'hello("site-a") + announce("evil", [("d", 1 << 20)], 3) + sync_done("evil", 0) + writes("evil", [entry(1, 7, 0, 4096, b"y" * 4096)])'
hostile "data shorter than its length" "data bytes for a length" 'hello("site-a") + announce("evil", [("d", 1 << 20)], 3) + sync_done("evil", 0) + writes("evil", [entry(1, 0, 0, 4096, b"y" * 10)])'
check "the replica's history is untouched" test "$(rb --json points web01)" = "$points_before"
id=$(ra checkpoint web01 --wait)
check "replication goes on after the hostile sessions (point $id)" test -n "$id"

# --- a full DR disk ----------------------------------------------------
if mount -t tmpfs -o size=24M tmpfs "$T/b/replicas" 2>/dev/null; then
	trap 'umount -l "$T/b/replicas" 2>/dev/null; cleanup' EXIT
	stop_a; stop_b
	rm -rf "$T/a/state"	# a fresh journal: the new replica gets a full copy
	start_b; start_a
	wait_replica_point 1 || die "initial copy onto the small disk"
	head -c 30M /dev/urandom >"$T/fill"
	nbdcopy "$T/fill" "$URI"
	ra checkpoint web01 >/dev/null
	for _ in $(seq 100); do
		ra --json status web01 | grep -q '"state": "refused"' && break
		sleep 0.1
	done
	check "a full DR disk is reported on the primary, naming the cause" sh -c "
		$BIN/replica -c $T/a.conf --json status web01 | grep -Eiq 'space|full'"
	check "both daemons survive a full DR disk" alive
	mount -o remount,size=256M "$T/b/replicas"
	id=$(ra checkpoint web01 --wait)
	rb --json failover web01 --point "$id" >"$T/fo.json"
	check "with room again, nothing was lost: point $id equals the primary" \
		cmp "$T/a/web01.img" "$(jget disks 0 path <"$T/fo.json")"
	rb cancel web01 >/dev/null
	stop_b
	umount -l "$T/b/replicas"
	trap cleanup EXIT
else
	echo "skip full-disk checks: cannot mount a tmpfs here"
fi

finish
