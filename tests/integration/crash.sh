#!/bin/bash
# crash.sh: kill -9 at awkward instants, then restart.
#  1. the primary, while a client writes and flushes: every write the client
#     saw acknowledged before one of its FLUSHes completed is in the next
#     point on the DR site, and the DR disk equals the primary's there;
#  2. the primary while it ships a large cycle;
#  3. the DR daemon while it applies points: every listed point still fails
#     over to the exact bytes the primary held;
#  4. the DR daemon while the writes of an interval arrive and are applied
#     ahead of their point: the latest point still fails over exactly;
#  5. the DR daemon right after it acknowledged a point it logged ahead of
#     its apply (random 4 KiB writes take the apply a few hundred ms): the
#     point fails over exactly after the restart.
set -euo pipefail
. "$(dirname "$0")/functions.sh"

two_sites_setup 128M
URI=$(URI_A)
PY=/usr/bin/python3

# A writer that records, durably, the last block whose FLUSH completed.
cat >"$T/writer.py" <<'EOP'
import nbd, os, struct, sys
uri, log, start = sys.argv[1], sys.argv[2], int(sys.argv[3])
h = nbd.NBD()
h.connect_uri(uri)
fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
i = start
try:
    while i < start + 20000:
        blk = struct.pack("<QQ", i, 0xfeedface) * 256
        h.pwrite(blk, (i % 30000) * 4096)
        if i % 8 == 7:
            h.flush()
            os.write(fd, b"%d\n" % i)
            os.fsync(fd)
        i += 1
except Exception as e:
    sys.exit(0)
EOP

# check_flushed LOG PATH: every block up to the last flushed one holds its
# pattern in the disk image PATH.
cat >"$T/verify.py" <<'EOP'
import struct, sys
log, path, start = sys.argv[1], sys.argv[2], int(sys.argv[3])
lines = open(log).read().split()
last = int(lines[-1]) if lines else start - 1
bad = 0
with open(path, "rb") as f:
    seen = {}
    for i in range(start, last + 1):
        seen[i % 30000] = i
    for blkno, i in seen.items():
        f.seek(blkno * 4096)
        if f.read(4096) != struct.pack("<QQ", i, 0xfeedface) * 256:
            bad += 1
print("flushed through", last, "bad blocks", bad)
sys.exit(1 if bad or last < start else 0)
EOP

for round in 1 2 3; do
	start=$((round * 100000))
	: >"$T/flushed.$round"
	$PY "$T/writer.py" "$URI" "$T/flushed.$round" "$start" &
	wpid=$!
	sleep "0.$((RANDOM % 6 + 3))"
	crash_a
	wait "$wpid" || true
	start_a
	id=$(ra checkpoint web01 --wait) || die "checkpoint after restart"
	check "round $round: primary image holds every flushed write" \
		$PY "$T/verify.py" "$T/flushed.$round" "$T/a/web01.img" "$start"
	rb --json failover web01 --point "$id" >"$T/fo.json" || die "failover"
	check "round $round: point $id on the DR holds every flushed write" \
		$PY "$T/verify.py" "$T/flushed.$round" "$(jget disks 0 path <"$T/fo.json")" "$start"
	check "round $round: DR point $id equals the primary image" \
		cmp "$T/a/web01.img" "$(jget disks 0 path <"$T/fo.json")"
	rb cancel web01 >/dev/null
done

# 2. kill -9 the primary while it ships a large cycle
head -c 48M /dev/urandom >"$T/big"
nbdcopy "$T/big" "$URI"
ra checkpoint web01 >/dev/null
sleep 0.2
crash_a
start_a
id=$(ra checkpoint web01 --wait) || die "checkpoint after crash while shipping"
rb --json failover web01 --point "$id" >"$T/fo.json"
check "crash while shipping: DR point $id equals the primary image" \
	cmp "$T/a/web01.img" "$(jget disks 0 path <"$T/fo.json")"
rb cancel web01 >/dev/null

# 3. kill -9 the DR daemon while it applies points
declare -A SUM
for round in 1 2 3 4; do
	off=$(( (round * 13) % 64 ))
	qemu-io -f raw -c "write -P $((round + 100)) ${off}M 24M" "$URI" >/dev/null
	id=$(ra checkpoint web01)
	SUM[$id]=$(sha256sum <"$T/a/web01.img" | cut -d' ' -f1)
	sleep "0.$((RANDOM % 4))"
	crash_b
	start_b
done
last=$(ra checkpoint web01 --wait)
SUM[$last]=$(sha256sum <"$T/a/web01.img" | cut -d' ' -f1)
for id in $(rb --json points web01 | python3 -c 'import json,sys; print(" ".join(str(p["id"]) for p in json.load(sys.stdin)["points"]))'); do
	[ -n "${SUM[$id]:-}" ] || continue
	rb --json failover web01 --point "$id" >"$T/fo.json"
	got=$(sha256sum <"$(jget disks 0 path <"$T/fo.json")" | cut -d' ' -f1)
	check "after DR crashes: point $id fails over to the primary's bytes" test "$got" = "${SUM[$id]}"
	rb cancel web01 >/dev/null
done
check "every point cut around the DR crashes is listed" sh -c "
	\"$BIN/replica\" -c \"$T/b.conf\" --json points web01 | python3 -c '
import json,sys
ids={p[\"id\"] for p in json.load(sys.stdin)[\"points\"]}
want={int(x) for x in sys.argv[1:]}
assert want <= ids, (want - ids)' ${!SUM[*]}"

# 4. kill -9 the DR daemon while writes arrive between points: the replica
#    image runs ahead of the latest point, and failover takes them back
id=$(ra checkpoint web01 --wait)
sum=$(sha256sum <"$T/a/web01.img" | cut -d' ' -f1)
for round in 1 2 3; do
	qemu-io -f raw -c "write -P $((round + 120)) $((round * 17))M 24M" "$URI" >/dev/null
	sleep "0.$((RANDOM % 4))"
	crash_b
	start_b
done
for _ in $(seq 300); do	# until the DR site holds every write
	st=$(ra --json status web01)
	[ "$(jget vms 0 acked_seq <<<"$st")" = "$(jget vms 0 journal_seq <<<"$st")" ] && break
	sleep 0.1
done
check "mid-interval DR crashes: the replica image holds the writes after point $id" \
	cmp "$T/a/web01.img" "$T/b/replicas/web01/web01.img"
rb --json failover web01 --point latest >"$T/fo.json"
got=$(sha256sum <"$(jget disks 0 path <"$T/fo.json")" | cut -d' ' -f1)
check "mid-interval DR crashes: the latest point $id fails over exactly" test "$got" = "$sum"
rb cancel web01 >/dev/null
id=$(ra checkpoint web01 --wait)
dr_settled
check "mid-interval DR crashes: the next point $id equals the primary" \
	cmp "$T/a/web01.img" "$T/b/replicas/web01/web01.img"

# 5. kill -9 the DR daemon as soon as a point is acknowledged: its
#    entries were logged with the marker, the apply had barely begun
for round in 1 2 3; do
	fio --name=burst --ioengine=nbd --uri="$URI" --rw=randwrite --bs=4k \
	    --iodepth=32 --size=128M --io_size=40M --refill_buffers \
	    --randseed=$((round + 7)) >/dev/null 2>&1 || die "fio burst"
	id=$(ra checkpoint web01 --wait) || die "checkpoint after the burst"
	crash_b
	sum=$(sha256sum <"$T/a/web01.img" | cut -d' ' -f1)
	start_b
	rb --json failover web01 --point "$id" >"$T/fo.json"
	got=$(sha256sum <"$(jget disks 0 path <"$T/fo.json")" | cut -d' ' -f1)
	check "round $round: DR killed once point $id was acknowledged: it fails over exactly" \
		test "$got" = "$sum"
	rb cancel web01 >/dev/null
done

finish
