#!/bin/bash
# nbd_clients.sh: drive replicad's NBD server (through the nbd_fileserver
# test program) with real clients and check the bytes that land in the file.
#
# usage: nbd_clients.sh /path/to/nbd_fileserver
#
# Needs qemu-io, qemu-img, nbdcopy, nbdinfo, nbdsh (python3-libnbd) and fio
# with the nbd engine.  Prints one line per check, then "N passed, M failed".
set -euo pipefail

SERVER=${1:?usage: nbd_clients.sh NBD_FILESERVER}
SIZE=$((64 << 20))
# nbdsh and python3-libnbd live in the system python.
PY=/usr/bin/python3
[ -x "$PY" ] || PY=python3
export PATH="/usr/bin:/bin:$PATH"

T=$(mktemp -d "${TMPDIR:-/tmp}/nbd_clients.XXXXXX")
SRVPID=
cleanup() {
	if [ -n "$SRVPID" ]; then
		kill "$SRVPID" 2>/dev/null || true
		wait "$SRVPID" 2>/dev/null || true
	fi
	rm -rf "$T"
}
trap cleanup EXIT

SOCK=$T/nbd.sock
DISK=$T/disk.raw
URI="nbd+unix:///vm/disk?socket=$SOCK"
truncate -s "$SIZE" "$DISK"

"$SERVER" "$SOCK" "$DISK" >"$T/server.log" 2>&1 &
SRVPID=$!
for _ in $(seq 100); do
	[ -S "$SOCK" ] && break
	kill -0 "$SRVPID" 2>/dev/null || break
	sleep 0.05
done
if [ ! -S "$SOCK" ]; then
	echo "FAIL server did not start"
	cat "$T/server.log"
	echo "0 passed, 1 failed"
	exit 1
fi

pass=0
fail=0
check() {
	local name=$1
	shift
	if "$@" >"$T/check.out" 2>&1; then
		echo "ok   $name"
		pass=$((pass + 1))
	else
		echo "FAIL $name"
		sed 's/^/    | /' "$T/check.out" | tail -n 25
		fail=$((fail + 1))
	fi
}

# qemu-io with every command's output checked for verification failures.
qio() {
	local out
	out=$(qemu-io -f raw "$@" "$URI" 2>&1) || { echo "$out"; return 1; }
	echo "$out"
	! grep -qiE 'fail|error|invalid' <<<"$out"
}

server_alive() {
	kill -0 "$SRVPID" 2>/dev/null
}

t_nbdinfo_size() {
	local size
	size=$(nbdinfo --size "$URI") && [ "$size" -eq "$SIZE" ] &&
	    nbdinfo "$URI" | grep -q 'can_multi_conn: true'
}

t_nbdinfo_list() {
	nbdinfo --list "nbd+unix://?socket=$SOCK" | tee /dev/stderr |
	    grep -q 'export="vm/disk"'
}

t_unknown_export() {
	local out
	if out=$(LIBNBD_DEBUG=1 nbdinfo "nbd+unix:///no/such?socket=$SOCK" \
	    2>&1); then
		echo "nbdinfo of an unknown export succeeded"
		return 1
	fi
	echo "$out" | grep -v 'debug' || true
	grep -q "server error message: unknown export 'no/such'" <<<"$out"
}

t_qemu_io_patterns() {
	qio -c 'write -P 0xa1 0 4k' -c 'write -P 0xb2 1M 64k' \
	    -c 'write -P 0xc3 12345 777' -c 'write -P 0xd4 63M 1M' \
	    -c 'write -P 0xe5 5M 8M' &&
	qio -c 'read -P 0xa1 0 4k' -c 'read -P 0xb2 1M 64k' \
	    -c 'read -P 0xc3 12345 777' -c 'read -P 0xd4 63M 1M' \
	    -c 'read -P 0xe5 5M 8M' -c 'read -P 0 4k 4k' &&
	cmp -n 4096 "$DISK" <(head -c 4096 /dev/zero | tr '\0' '\241') &&
	cmp -i $((63 << 20)):0 "$DISK" <(head -c 1M /dev/zero | tr '\0' '\324')
}

t_qemu_io_zero_discard() {
	qio -c 'write -P 0x5a 16M 2M' -c 'write -z 16M 64k' \
	    -c 'write -z -u 17M 64k' -c 'discard 17664k 128k' \
	    -c 'flush' &&
	qio -c 'read -P 0 16M 64k' -c 'read -P 0x5a 16448k 960k' \
	    -c 'read -P 0 17M 64k' -c 'read -P 0 17664k 128k' \
	    -c 'read -P 0x5a 17792k 256k'
}

t_qemu_io_fua() {
	qio -c 'write -f -P 0x77 20M 256k' -c 'write -f -z 20M 4k' &&
	qio -c 'read -P 0 20M 4k' -c 'read -P 0x77 20484k 252k'
}

t_qemu_io_aio() {
	# many requests in flight on one connection
	local args=() i
	for i in $(seq 0 63); do
		args+=(-c "aio_write -P $((i + 1)) $((24 << 20 | i << 16)) 64k")
	done
	args+=(-c aio_flush)
	for i in $(seq 0 63); do
		args+=(-c "aio_read -P $((i + 1)) $((24 << 20 | i << 16)) 64k")
	done
	args+=(-c aio_flush)
	qio "${args[@]}"
}

t_qemu_img() {
	head -c 8M /dev/urandom >"$T/rand8"
	cp "$DISK" "$T/local.raw" &&
	    dd if="$T/rand8" of="$T/local.raw" bs=1M seek=30 conv=notrunc \
	    status=none &&
	    qemu-img convert -n -f raw -O raw "$T/local.raw" "$URI" &&
	    qemu-img compare -f raw -F raw "$T/local.raw" "$URI" &&
	    cmp "$T/local.raw" "$DISK" &&
	    qemu-img convert -f raw -O raw "$URI" "$T/back.raw" &&
	    cmp "$T/back.raw" "$DISK"
}

t_nbdcopy() {
	head -c "$SIZE" /dev/urandom >"$T/rand64"
	nbdcopy --flush "$T/rand64" "$URI" &&
	    cmp "$T/rand64" "$DISK" &&
	    [ "$(sha256sum <"$T/rand64")" = "$(sha256sum <"$DISK")" ] &&
	    nbdcopy "$URI" "$T/copy64" && cmp "$T/rand64" "$T/copy64"
}

t_nbdsh() {
	URI=$URI nbdsh -u "$URI" -c '
import os
# let bad requests reach the server instead of failing in libnbd
h.set_strict_mode(h.get_strict_mode() & ~nbd.STRICT_BOUNDS)
sz = h.get_size()
assert sz == 64 << 20, sz
assert h.can_flush() and h.can_fua() and h.can_trim() and h.can_zero()
assert h.can_multi_conn()
buf = os.urandom(1 << 20)
h.pwrite(buf, 3 << 20)
assert h.pread(1 << 20, 3 << 20) == buf
h.pwrite(b"\x42" * 4096, 40 << 20, nbd.CMD_FLAG_FUA)
h.flush()
assert h.pread(4096, 40 << 20) == b"\x42" * 4096
h.zero(8192, 3 << 20)
assert h.pread(8192, 3 << 20) == bytes(8192)
assert h.pread(4096, (3 << 20) + 8192) == buf[8192:12288]
h.trim(4096, (3 << 20) + 65536)
assert h.pread(4096, (3 << 20) + 65536) == bytes(4096)
# out of range: an error, and the connection stays usable
for off, ln in ((sz - 100, 4096), (sz, 1), (1 << 62, 512)):
    try:
        h.pread(ln, off)
        raise AssertionError("pread beyond the end succeeded")
    except nbd.Error as e:
        print("pread", off, ln, "->", e.errno, e.string)
        assert e.errno == "EINVAL", e.errno
for fn in (lambda: h.pwrite(b"x" * 512, sz - 1),
           lambda: h.zero(4096, sz),
           lambda: h.trim(4096, sz - 1)):
    try:
        fn()
        raise AssertionError("request beyond the end succeeded")
    except nbd.Error as e:
        print("beyond end ->", e.errno, e.string)
assert h.pread(1 << 20, 3 << 20)[69632:] == buf[69632:]
# a batch of async writes completing out of band
cookies = [h.aio_pwrite(bytes([i]) * 65536, (48 << 20) + i * 65536)
           for i in range(64)]
while h.aio_in_flight() > 0:
    h.poll(-1)
for c in cookies:
    assert h.aio_command_completed(c)
h.flush()
for i in range(64):
    assert h.pread(65536, (48 << 20) + i * 65536) == bytes([i]) * 65536
h.shutdown()
# simple replies (no structured reply negotiation)
h2 = nbd.NBD()
h2.set_request_structured_replies(False)
h2.set_strict_mode(h2.get_strict_mode() & ~nbd.STRICT_BOUNDS)
h2.connect_uri(os.environ["URI"])
assert not h2.get_structured_replies_negotiated()
h2.pwrite(b"s" * 100000, 44 << 20)
assert h2.pread(100000, 44 << 20) == b"s" * 100000
try:
    h2.pread(4096, sz - 1)
    raise AssertionError("pread beyond the end succeeded")
except nbd.Error as e:
    assert e.errno == "EINVAL", e.errno
h2.flush()
assert h2.pread(4, 44 << 20) == b"ssss"
h2.shutdown()
print("nbdsh ok")
'
}

t_fio() {
	fio --name=nbdverify --ioengine=nbd --uri="$URI" --rw=randwrite \
	    --bs=4k --iodepth=32 --size=16M --verify=crc32c \
	    --verify_fatal=1 --randrepeat=0 --output-format=terse \
	    --minimal >/dev/null &&
	fio --name=nbdmulti --ioengine=nbd --uri="$URI" --rw=randwrite \
	    --bs=64k --iodepth=16 --size=8M --numjobs=2 \
	    --offset_increment=8M --verify=crc32c --verify_fatal=1 \
	    --minimal >/dev/null
}

t_hostile() {
	"$PY" - "$SOCK" <<'EOF'
import socket, struct, sys, time
path = sys.argv[1]
IHAVEOPT = 0x49484156454f5054
REQ = 0x25609513

def conn():
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    s.connect(path)
    hello = recvn(s, 18)
    assert hello[:16] == b"NBDMAGICIHAVEOPT", hello
    return s

def recvn(s, n):
    b = b""
    while len(b) < n:
        c = s.recv(n - len(b))
        if not c:
            raise EOFError("closed after %d of %d bytes" % (len(b), n))
        b += c
    return b

def closed(s):
    try:
        while True:
            if not s.recv(65536):
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except socket.timeout:
        return False

def send(s, data):
    try:
        s.sendall(data)
    except (ConnectionResetError, BrokenPipeError):
        pass

def opt(s, o, data=b""):
    send(s, struct.pack(">QII", IHAVEOPT, o, len(data)) + data)

def opt_reply(s):
    magic, o, typ, ln = struct.unpack(">QIII", recvn(s, 20))
    assert magic == 0x3e889045565a9, hex(magic)
    return o, typ, recvn(s, ln)

def go(s, structured=False):
    send(s, struct.pack(">I", 3))
    if structured:
        opt(s, 8)
        assert opt_reply(s)[1] == 1
    name = b"vm/disk"
    opt(s, 7, struct.pack(">I", len(name)) + name + struct.pack(">H", 0))
    while True:
        o, typ, data = opt_reply(s)
        assert typ in (1, 3), hex(typ)
        if typ == 1:
            return

def req(s, typ, off, ln, cookie=1, flags=0):
    send(s, struct.pack(">IHHQQI", REQ, flags, typ, cookie, off, ln))

def simple_reply(s):
    magic, err, cookie = struct.unpack(">IIQ", recvn(s, 16))
    assert magic == 0x67446698, hex(magic)
    return err, cookie

checks = 0
def ok(what):
    global checks
    checks += 1
    print("  hostile:", what)

# garbage right after the magic
s = conn(); send(s, b"\xff" * 4 + b"garbage" * 100); assert closed(s); ok("bad client flags")
s = conn(); send(s, struct.pack(">I", 3) + b"this is not IHAVEOPT" * 10); assert closed(s); ok("bad option magic")
s = conn(); send(s, struct.pack(">I", 3)); send(s, struct.pack(">QII", IHAVEOPT, 7, 0xfffffff0)); assert closed(s); ok("huge option length")
s = conn(); send(s, struct.pack(">I", 3)); send(s, struct.pack(">QII", IHAVEOPT, 7, 100) + b"x" * 10); s.close(); ok("truncated option")
# malformed options get error replies, then the client can continue
s = conn(); send(s, struct.pack(">I", 3))
opt(s, 7, struct.pack(">I", 1000) + b"vm"); assert opt_reply(s)[1] == 0x80000003
opt(s, 7, struct.pack(">I", 2) + b"no" + struct.pack(">H", 0)); o, typ, msg = opt_reply(s); assert typ == 0x80000006 and b"unknown export" in msg, (typ, msg)
opt(s, 99, b"abc"); assert opt_reply(s)[1] == 0x80000001
opt(s, 3, b"x"); assert opt_reply(s)[1] == 0x80000003
opt(s, 10, struct.pack(">I", 0)); assert opt_reply(s)[1] == 0x80000003
opt(s, 2); assert opt_reply(s)[1] == 1; assert closed(s); ok("malformed options answered, abort")
s = conn(); send(s, struct.pack(">I", 3))
for i in range(200):
    opt(s, 99)
assert closed(s); ok("option flood")
s = conn(); send(s, struct.pack(">I", 3)); opt(s, 1, b"nope"); assert closed(s); ok("EXPORT_NAME unknown")
s = conn(); send(s, struct.pack(">I", 2)); opt(s, 1, b"vm/disk")
size, flags = struct.unpack(">QH", recvn(s, 10)); assert size == 64 << 20 and flags & 1
req(s, 0, 0, 512); assert simple_reply(s) == (0, 1); recvn(s, 512)
req(s, 2, 0, 0); assert closed(s); ok("EXPORT_NAME, read, disc")

# transmission: errors are replies, not disconnects
for structured in (False, True):
    s = conn(); go(s, structured)
    req(s, 0, 0, 0xffffffff, cookie=7)    # read too long
    req(s, 0, (64 << 20) - 10, 11, cookie=8)  # read beyond end
    req(s, 99, 0, 0, cookie=9)            # unknown command
    req(s, 1, (64 << 20) - 1, 2, cookie=10); send(s, b"ab")   # write beyond end
    req(s, 4, 1 << 63, 4096, cookie=11)    # trim, offset overflow
    req(s, 0, 4096, 4, cookie=12)         # a good read
    got = {}
    for _ in range(6):
        if structured:
            magic, fl, typ, cookie, ln = struct.unpack(">IHHQI", recvn(s, 20))
            assert magic == 0x668e33ef and fl & 1, (hex(magic), fl)
            data = recvn(s, ln)
            got[cookie] = struct.unpack(">I", data[:4])[0] if typ == 32769 else 0
        else:
            err, cookie = simple_reply(s)
            if cookie == 12:
                recvn(s, 4)
            got[cookie] = err
    assert got == {7: 22, 8: 22, 9: 22, 10: 28, 11: 22, 12: 0}, got
    ok("bad requests get errors (%s)" % ("structured" if structured else "simple"))
    s.close()

s = conn(); go(s); req(s, 1, 0, 0xffffffff); send(s, b"x" * 1000); assert closed(s); ok("write of 0xffffffff bytes")
s = conn(); go(s); send(s, b"\x00" * 28); assert closed(s); ok("bad request magic")
s = conn(); go(s); send(s, struct.pack(">IHH", REQ, 0, 1)); s.close(); ok("half a request header")
# die with many async writes pending
s = conn(); go(s)
for i in range(300):
    req(s, 1, i * 4096, 4096, cookie=i); send(s, b"z" * 4096)
req(s, 3, 0, 0)
s.close(); ok("hang up with writes in flight")
s = conn(); go(s)
for i in range(100):
    req(s, 0, 0, 1 << 20, cookie=i)     # lots of reply data, never read
s.close(); ok("hang up with reads queued")
s = conn(); s.close(); ok("hang up before the flags")
time.sleep(0.2)
print("hostile: %d cases done" % checks)
EOF
	server_alive && nbdinfo --size "$URI" && [ "$(nbdinfo --size "$URI")" -eq "$SIZE" ]
}

t_server_alive() {
	server_alive && nbdinfo "$URI" >/dev/null
}

check "nbdinfo shows the size" t_nbdinfo_size
check "nbdinfo --list" t_nbdinfo_list
check "unknown export refused with a message" t_unknown_export
check "qemu-io write/read patterns" t_qemu_io_patterns
check "qemu-io write -z / discard" t_qemu_io_zero_discard
check "qemu-io FUA writes" t_qemu_io_fua
check "qemu-io aio (64 in flight)" t_qemu_io_aio
check "qemu-img convert/compare" t_qemu_img
check "nbdcopy into the export, cmp backing file" t_nbdcopy
check "nbdsh pwrite/pread/flush/zero/trim/errors" t_nbdsh
check "fio randwrite iodepth 32 verify crc32c" t_fio
check "hostile clients do not kill the server" t_hostile
check "server still alive and answering" t_server_alive

# The server must shut down cleanly on SIGTERM.
t_sigterm() {
	kill -TERM "$SRVPID" && wait "$SRVPID"
	local rc=$?
	SRVPID=
	[ "$rc" -eq 0 ] && [ ! -e "$SOCK" ]
}
check "clean exit on SIGTERM" t_sigterm

t_no_sanitizer_reports() {
	! grep -E 'Sanitizer|runtime error' "$T/server.log"
}
check "no sanitizer reports from the server" t_no_sanitizer_reports

if [ "$fail" -ne 0 ]; then
	echo "--- server log (tail) ---"
	tail -n 40 "$T/server.log"
fi
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
