#!/bin/bash
# image_full.sh: the file system of the primary's image fills up.  Writes
# are acknowledged once the journal has them, before the image does; when
# the image writes then fail (ENOSPC), nothing acknowledged is lost: the VM
# turns critical and its reads fail instead of returning old bytes, and once
# there is room again a restart replays the journal into the image, which
# then holds every acknowledged write, as does the DR site's next point.
set -euo pipefail
. "$(dirname "$0")/functions.sh"
PY=/usr/bin/python3	# has the nbd module

T=$(mktemp -d "${TMPDIR:-/tmp}/replicad-test.XXXXXX")
trap 'cleanup_all' EXIT
cleanup_all() {	# the daemons go first, then the mount, then the files
	local keep=${KEEP_TMP:-}
	KEEP_TMP=1 cleanup
	umount "$T/fs" 2>/dev/null || true
	[ -n "$keep" ] || rm -rf "$T"
}
mkdir -p "$T/fs" "$T/a"
if ! mount -t tmpfs -o size=8m tmpfs "$T/fs" 2>/dev/null; then
	echo "skip: cannot mount a tmpfs for the image (needs root)"
	exit 77
fi
start_sshd
write_configs
truncate -s 64M "$T/fs/web01.img"
ln -s "$T/fs/web01.img" "$T/a/web01.img"
start_b
start_a
wait_replica_point 1 || die "initial copy did not complete"

# Blocks of 64 KiB, each with its own pattern, written in order until the
# daemon refuses one; every block it acknowledged is recorded.
cat >"$T/writer.py" <<'EOP'
import nbd, struct, sys
uri, log = sys.argv[1], sys.argv[2]
h = nbd.NBD()
h.connect_uri(uri)
with open(log, "w") as f:
    for i in range(512):
        try:
            h.pwrite(struct.pack("<QQ", i, 0xfeedface) * 4096, i * 65536)
        except nbd.Error as e:
            print("refused block", i, e, file=sys.stderr)
            break
        f.write("%d\n" % i)
        f.flush()
EOP
cat >"$T/verify.py" <<'EOP'
import struct, sys
log, path = sys.argv[1], sys.argv[2]
acked = [int(x) for x in open(log).read().split()]
bad = 0
with open(path, "rb") as f:
    for i in acked:
        f.seek(i * 65536)
        if f.read(65536) != struct.pack("<QQ", i, 0xfeedface) * 4096:
            bad += 1
print(len(acked), "acknowledged blocks,", bad, "not in the image")
sys.exit(1 if bad or not acked else 0)
EOP
$PY "$T/writer.py" "$(URI_A)" "$T/acked" 2>"$T/writer.err" || true
check "the image's file system filled before the writes ended" \
	grep -q "refused block" "$T/writer.err"
check "more was acknowledged than the image could take" \
	test "$(wc -l <"$T/acked")" -gt 128
for _ in $(seq 50); do	# the writer's failure shows in the status
	[ "$(ra --json status web01 | jget vms 0 health)" = critical ] && break
	sleep 0.1
done
check "the VM's health is critical" \
	test "$(ra --json status web01 | jget vms 0 health)" = critical
qemu-io -f raw -c "read 0 64k" "$(URI_A)" >"$T/read.out" 2>&1 || true
check "a read fails instead of returning old bytes" \
	grep -q "read failed: Input/output error" "$T/read.out"
check "the daemon names the cause" grep -q "No space left" "$T/a.log"

# room again; a restart replays the journal into the image
mount -o remount,size=128m "$T/fs"
stop_a
start_a
check "after the restart the image holds every acknowledged write" \
	$PY "$T/verify.py" "$T/acked" "$T/a/web01.img"
check "the VM is healthy again" \
	test "$(ra --json status web01 | jget vms 0 health)" != critical
id=$(ra checkpoint web01 --wait) || die "checkpoint after the restart"
rb --json failover web01 --point "$id" >"$T/fo.json"
check "DR point $id equals the primary image" \
	cmp "$T/a/web01.img" "$(jget disks 0 path <"$T/fo.json")"
rb cancel web01 >/dev/null
finish
