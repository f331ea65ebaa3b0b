#!/bin/bash
# large_writes.sh: large NBD writes (64 KiB-aligned, 256 KiB and more) over
# the same pieces of the disk, overwritten after points were cut and before
# anything was shipped, as seen by real NBD clients:
#  1. with shipping paused, five rounds of 1 MiB writes over one 8 MiB
#     region (with 4 KiB writes, 4 KiB- but not 64 KiB-aligned and
#     unaligned ones, 192, 256, 320, 512 KiB and 2, 4 MiB writes, zeroing,
#     a trim among them), a point after each round, two back to back after
#     some: after resume, every point fails over to the bytes an NBD client
#     read from the primary when it was cut, and each round's writes read
#     back as written;
#  2. with shipping paused, kill -9 of the primary while a client rewrites
#     a 16 MiB region in 1 MiB writes (and 4 KiB writes into the last one),
#     flushing every 4 writes, and points are cut every 0.3 s: after the
#     restart the primary holds every flushed write and is the state after
#     some run of the client's writes (at least to its last flush); after
#     resume every point is listed and fails over: the DR's latest to the
#     primary's bytes, part 1's to their bytes still, each cut during the
#     writes to the state after a run of them (in order, no later than the
#     restarted primary's);
#  3. with shipping live, rounds of 1 MiB writes (64 KiB-aligned) over one
#     8 MiB region, each round new data, a point cut (no --wait) right
#     after each, the next round at once, so the copy on write races the
#     shipper still sending the previous rounds' pieces: ten rounds
#     unthrottled (where shipping often keeps up: how far behind it was is
#     printed), then eight with `bandwidth` at 16M, where it is surely
#     behind (checked): every point fails over to the bytes an NBD client
#     read from the primary when it was cut, which hold the rounds as
#     written;
#  4. a clean stop (SIGTERM) of the primary while a client streams 1 MiB
#     writes into part 2's region, flushing every 4 writes, shipping live
#     and points cut every 0.3 s: the daemon exits 0 with no sanitizer
#     report, restarts, holds every flushed write; the points cut during
#     the writes and the restarted primary follow the writes in order, and
#     a point cut after the restart fails over to the primary's bytes.
set -euo pipefail
. "$(dirname "$0")/functions.sh"

two_sites_setup 64M
URI=$(URI_A)
PY=/usr/bin/python3
declare -A IMG	# point -> the primary's disk, read through NBD when it was cut
declare -A WHAT	# point -> what it was cut after

cat >"$T/lw.py" <<'EOP'
import json, os, random, re, sys, time
import nbd

K, M, P = 4096, 1 << 20, 64 << 10
B1, L1 = 8 * M, 8 * M     # part 1's region
B2, L2 = 32 * M, 16 * M   # part 2's region (and part 4's)
B3, L3 = 48 * M, 8 * M    # part 3's region
LOOKAHEAD = 64            # writes the client may have sent after its last flush


def pattern(tag, n):
    return random.Random(tag).randbytes(n)


def data(op):
    kind, off, n, tag = op
    return pattern(tag, n) if kind == "w" else bytes(n)


def do(h, op):
    kind, off, n, tag = op
    if kind == "w":
        h.pwrite(pattern(tag, n), off)
    elif kind == "z":
        h.zero(n, off)
    else:
        h.trim(n, off)


def round_ops(k):
    """Part 1, round k: (kind, offset, length, tag), in the order sent."""
    r = random.Random(100 + k)

    def at(n, align=P):   # an aligned offset in the region where n bytes fit
        return B1 + align * r.randrange((L1 - n) // align + 1)
    ops = [("w", at(M), M) for _ in range(6)]
    if k in (2, 4):
        ops += [("w", at(K, K), K) for _ in range(3)]
        ops.append(("w", at(2 * M) + K * r.randrange(1, 16), M))
    if k in (3, 5):
        ops.append(("z", at(256 << 10), 256 << 10))
    if k in (1, 3, 4):
        ops.append(("w", at(512 << 10), 512 << 10))
    if k == 1:
        ops += [("w", at(n), n) for n in (256 << 10, 192 << 10, 320 << 10, 2 * M)]
    if k == 3:
        ops.append(("w", at(2 * M, K) + 512, M + 512))
    if k == 5:
        ops += [("t", at(256 << 10), 256 << 10), ("w", B1 + 2 * M, 4 * M)]
    r.shuffle(ops)
    if k > 1:   # first 4 KiB into a piece the previous round's last large write put
        big = [o for o in round_ops(k - 1) if o[0] == "w" and o[2] >= 256 << 10][-1]
        ops.insert(0, ("w", big[1] + K * r.randrange(big[2] // K), K))
    return [(kind, off, n, 1000 * k + i) for i, (kind, off, n) in enumerate(ops)]


def writer_ops():
    """Part 2: rounds of 1 MiB writes, one per MiB of the region in a random
    order (some shifted by a few 64 KiB pieces), a 4 KiB write into the last
    one now and then, a 256 KiB zeroing now and then."""
    r = random.Random(7)
    i = 0
    while True:
        slots = list(range(L2 // M))
        r.shuffle(slots)
        for s in slots:
            off = B2 + s * M
            if r.random() < 0.3:
                off = min(off + P * r.randrange(1, 16), B2 + L2 - M)
            yield ("w", off, M, 2000000 + i)
            i += 1
            if r.random() < 0.2:
                yield ("w", off + K * r.randrange(M // K), K, 2000000 + i)
                i += 1
            if r.random() < 0.05:
                z = 256 << 10
                yield ("z", B2 + P * r.randrange((L2 - z) // P + 1), z, 2000000 + i)
                i += 1


def first(n):
    g = writer_ops()
    return [next(g) for _ in range(n)]


def flushed(log):
    lines = open(log).read().split("\n")
    done = [json.loads(x)["done"] for x in lines if x]
    return done[-1] if done else 0


def connect(uri):
    h = nbd.NBD()
    h.connect_uri(uri)
    return h


def cmd_round(uri, k):
    h = connect(uri)
    for op in round_ops(int(k)):
        do(h, op)
    h.flush()
    h.shutdown()


def cmd_model(p0, img, k):
    """img is p0 with rounds 1..k applied; a trimmed byte reads as anything
    until it is written again."""
    st = bytearray(open(p0, "rb").read())
    known = bytearray(b"\1" * len(st))
    for j in range(1, int(k) + 1):
        for op in round_ops(j):
            kind, off, n, tag = op
            st[off:off + n] = data(op)
            known[off:off + n] = (b"\0" if kind == "t" else b"\1") * n
    got = open(img, "rb").read()
    for m in re.finditer(b"\0+", known):
        st[m.start():m.end()] = got[m.start():m.end()]
        print("trimmed %d+%d reads as %s" % (m.start(), m.end() - m.start(),
              "zeroes" if got[m.start():m.end()].count(0) == m.end() - m.start() else "data"))
    bad = [b for b in range(len(st) // K) if st[b * K:(b + 1) * K] != got[b * K:(b + 1) * K]]
    print("%d of %d blocks differ from the model" % (len(bad), len(st) // K),
          ["%d" % (b * K) for b in bad[:10]])
    sys.exit(1 if bad else 0)


def cmd_writer(uri, log, pause):
    h = connect(uri)
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    n = 0
    try:
        for op in writer_ops():
            do(h, op)
            n += 1
            if n % 4 == 0:
                h.flush()
                os.write(fd, b'{"done": %d}\n' % n)
                os.fsync(fd)
            if n == 100000:
                sys.exit(3)  # never killed: the test went wrong
            time.sleep(float(pause))
    except nbd.Error:
        pass


def cmd_flushed(log, pre, img):
    """img holds pre outside the region and, in each block of it, the newest
    flushed write's data (or, where none, pre's), or a later write's."""
    f = flushed(log)
    ops = first(f + LOOKAHEAD)
    pre_b = open(pre, "rb").read()
    st = bytearray(pre_b[B2:B2 + L2])
    for op in ops[:f]:
        st[op[1] - B2:op[1] - B2 + op[2]] = data(op)
    alt = {}
    for op in ops[f:]:
        d = data(op)
        for b in range(op[2] // K):
            alt.setdefault((op[1] - B2) // K + b, []).append(d[b * K:(b + 1) * K])
    got = open(img, "rb").read()
    outside = got[:B2] == pre_b[:B2] and got[B2 + L2:] == pre_b[B2 + L2:]
    reg = got[B2:B2 + L2]
    bad = [b for b in range(L2 // K) if reg[b * K:(b + 1) * K] != st[b * K:(b + 1) * K]
           and reg[b * K:(b + 1) * K] not in alt.get(b, [])]
    later = sum(1 for b in range(L2 // K) if reg[b * K:(b + 1) * K] != st[b * K:(b + 1) * K])
    print("%d writes flushed; %d blocks hold none of their allowed contents, "
          "%d a write after the last flush; outside the region %s" %
          (f, len(bad), later - len(bad), "unchanged" if outside else "CHANGED"))
    sys.exit(0 if f >= 20 and not bad and outside else 1)


def cmd_prefix(log, pre, after, *points):
    """Each point (in the order cut), then the restarted primary (after): the
    state after the client's first n writes, n never going down, and for the
    primary at least to its last flush.  The one write a point or the crash
    caught in flight may be there in part (whole 4 KiB blocks of it)."""
    f = flushed(log)
    ops = first(f + LOOKAHEAD)
    pre_b = open(pre, "rb").read()
    imgs = list(points) + [after]
    regs, ok = [], []
    for path in imgs:
        b = open(path, "rb").read()
        ok.append(b[:B2] == pre_b[:B2] and b[B2 + L2:] == pre_b[B2 + L2:])
        regs.append(b[B2:B2 + L2])
    st = bytearray(pre_b[B2:B2 + L2])
    nb = L2 // K

    def blk(buf, b):
        return bytes(buf[b * K:(b + 1) * K])
    mism = [{b for b in range(nb) if blk(r, b) != blk(st, b)} for r in regs]
    found = [[0] if not m else [] for m in mism]
    torn = [[] for _ in regs]
    for n, op in enumerate(ops):
        st[op[1] - B2:op[1] - B2 + op[2]] = data(op)
        touched = set(range((op[1] - B2) // K, (op[1] - B2 + op[2]) // K))
        for j, r in enumerate(regs):
            before = mism[j]
            now = {b for b in before if b not in touched}
            now |= {b for b in touched if blk(r, b) != blk(st, b)}
            if not now:
                found[j].append(n + 1)
            elif before and (before | now) <= touched and not (before & now):
                torn[j].append(n)
            mism[j] = now
    good, prev = True, 0
    for j, path in enumerate(imgs):
        ns = sorted(set(found[j]) | set(torn[j]))
        last = j == len(imgs) - 1
        fit = [n for n in ns if n >= prev and (n >= f or not last)]
        print("%s: the state after the first %s writes%s%s%s" % (
            os.path.basename(path), ns or "(none of the)",
            "".join(", or %d and part of the next" % n for n in torn[j]),
            "" if ok[j] else "; outside the region CHANGED",
            "" if fit else "  <- BAD: none %s" % (
                "at or after the last flush" if last else "at or after %d" % prev)))
        if not fit or not ok[j]:
            good = False
        else:
            prev = fit[0]
    print("%d writes flushed before the primary went down" % f)
    sys.exit(0 if good and len(imgs) > 1 else 1)


def live_ops(k):
    """Part 3, round k: every aligned MiB of the region in a random order
    (some shifted by a few 64 KiB pieces), and four more 1 MiB writes at
    64 KiB-aligned offsets."""
    r = random.Random(300 + k)
    slots = list(range(L3 // M))
    r.shuffle(slots)
    offs = []
    for s in slots:
        off = B3 + s * M
        if r.random() < 0.3:
            off = min(off + P * r.randrange(1, 16), B3 + L3 - M)
        offs.append(off)
    offs += [B3 + P * r.randrange((L3 - M) // P + 1) for _ in range(4)]
    return [("w", off, M, 3000000 + 1000 * k + i) for i, off in enumerate(offs)]


def cmd_live(uri, k):
    h = connect(uri)
    for op in live_ops(int(k)):
        do(h, op)
    h.flush()
    h.shutdown()


def cmd_lmodel(pre, *imgs):
    """imgs[j] is pre with part 3's rounds 1..j+1 applied."""
    st = bytearray(open(pre, "rb").read())
    good = True
    for j, path in enumerate(imgs):
        for op in live_ops(j + 1):
            st[op[1]:op[1] + op[2]] = data(op)
        got = open(path, "rb").read()
        bad = [b for b in range(len(st) // K) if st[b * K:(b + 1) * K] != got[b * K:(b + 1) * K]]
        if bad:
            good = False
            print("%s: %d blocks differ from rounds 1..%d" % (path, len(bad), j + 1),
                  ["%d" % (b * K) for b in bad[:10]])
    print("%d captures checked" % len(imgs))
    sys.exit(0 if good and imgs else 1)


globals()["cmd_" + sys.argv[1]](*sys.argv[2:])
EOP
lw() { $PY "$T/lw.py" "$@"; }
# capture FILE: the primary's disk as an NBD client reads it
capture() { rm -f "$1"; nbdcopy "$URI" "$1"; }
points() {
	rb --json points web01 | python3 -c 'import json,sys
print(" ".join(str(i) for i in sorted(p["id"] for p in json.load(sys.stdin)["points"])))'
}
# listed WANT...: the DR site lists every point in WANT
listed() {
	python3 -c 'import sys; have = set(sys.argv[1].split()); want = set(sys.argv[2:])
assert want and want <= have, "not listed: %s" % sorted(want - have, key=int)' "$(points)" "$@"
}
dr_point() { rb --json status web01 | jget vms 0 last_point; }

p1=$(dr_point)
capture "$T/p0.img"
IMG[$p1]=$T/p0.img
WHAT[$p1]="the initial copy"

# 1. rounds of overwrites, points between them, nothing shipped meanwhile
ra pause web01 >/dev/null
for k in 1 2 3 4 5; do
	lw round "$URI" "$k" || die "round $k: the NBD client failed"
	capture "$T/p$k.img"
	check "round $k: the primary reads back what rounds 1..$k wrote" \
		lw model "$T/p0.img" "$T/p$k.img" "$k"
	cuts=1
	case $k in 2 | 4) cuts=2 ;; esac	# the second one has an empty interval
	for c in $(seq "$cuts"); do
		id=$(ra --json checkpoint web01 --label "r$k" | jget point) ||
			die "checkpoint after round $k"
		IMG[$id]=$T/p$k.img
		WHAT[$id]="round $k"
		[ "$c" = 1 ] || WHAT[$id]="round $k, an empty interval after point $((id - 1))"
	done
done
last1=$id
check "nothing reached the DR site while paused" test "$(dr_point)" = "$p1"
ra resume web01 >/dev/null
wait_replica_point "$last1" || die "point $last1 did not reach the DR site"
check "the DR site lists points ${!IMG[*]}" listed "${!IMG[@]}"
for id in $(points); do
	[ -n "${IMG[$id]:-}" ] || continue
	fo_check "$id" "${IMG[$id]}" "point $id (${WHAT[$id]}) fails over to the primary's bytes"
done

# fo_copy POINT DEST: fail web01 over to POINT on the DR site, copy the
# disk to DEST, and cancel; fails if the failover does
fo_copy() {
	rb --json failover web01 --point "$1" >"$T/fo.json" || return 1
	cp "$(jget disks 0 path <"$T/fo.json")" "$2" || return 1
	rb cancel web01 >/dev/null
}

# start_writer FLUSHED CUTS: lw's writer in the background (wpid),
# logging its flushes to FLUSHED, and a point cut every 0.3 s with the
# ids in CUTS (cpid), until $T/stop exists
start_writer() {
	rm -f "$T/stop"
	: >"$1"
	: >"$2"
	lw writer "$URI" "$1" 0.004 &
	wpid=$!
	(
		while [ ! -e "$T/stop" ]; do
			sleep 0.3
			ra --json checkpoint web01 2>/dev/null | jget point >>"$2" 2>/dev/null || true
		done
	) &
	cpid=$!
}

# 2. kill -9 of the primary while a client rewrites large pieces and
#    points are cut, shipping paused
ra pause web01 >/dev/null
capture "$T/pre2.img"
start_writer "$T/flushed.log" "$T/cut.txt"
sleep 3
crash_a
touch "$T/stop"
wait "$cpid" || true
wstatus=0
wait "$wpid" || wstatus=$?
check "the client was still writing when the primary was killed" test "$wstatus" = 0
start_a
check "the pause survives the crash" test "$(ra --json status web01 | jget vms 0 state)" = paused
capture "$T/after.img"
check "after kill -9 the primary holds every flushed write" \
	lw flushed "$T/flushed.log" "$T/pre2.img" "$T/after.img"

ra resume web01 >/dev/null
# settle, bounded: its `checkpoint --wait` would wait 2 min a try if
# shipping stalled
id=$(ra checkpoint web01) || die "no point after the crash"
wait_replica_point "$id" || die "point $id, cut after the crash, did not reach the DR site"
dr_settled web01
capture "$T/final.img"
check "the resumed primary reads as it did after the restart" cmp "$T/after.img" "$T/final.img"
latest=$(dr_point)
IMG[$latest]=$T/final.img
WHAT[$latest]="the DR's latest, after the crash"

ids=$(points)
mapfile -t cut <"$T/cut.txt"
echo "points cut during the writes: ${cut[*]}"
check "every point the primary returned is listed on the DR site" listed "${!IMG[@]}" "${cut[@]}"
during=()
for id in $ids; do
	if [ -n "${IMG[$id]:-}" ]; then
		fo_check "$id" "${IMG[$id]}" "after the crash: point $id (${WHAT[$id]}) fails over to the primary's bytes"
		continue
	fi
	if fo_copy "$id" "$T/q$id.img"; then
		ok "after the crash: point $id fails over"
		during+=("$T/q$id.img")
	else
		not_ok "after the crash: point $id fails over"
	fi
done
check "the ${#during[@]} points cut during the writes and the restarted primary follow the writes in order" \
	lw prefix "$T/flushed.log" "$T/pre2.img" "$T/after.img" "${during[@]}"
# 3. rounds of overwrites with shipping live: a point right after each
#    round, the next round at once
wait_replicating() {
	local _
	for _ in $(seq 600); do
		[ "$(ra --json status web01 | jget vms 0 state)" = replicating ] && return 0
		sleep 0.05
	done
	return 1
}
capture "$T/pre3.img"
p3=()	# part 3's points, in the order cut
lround=0
# live_rounds N: N more rounds, each: write, flush, capture, cut a point,
# note how far the DR site is behind as the next round begins
live_rounds() {
	local _ id
	for _ in $(seq "$1"); do
		lround=$((lround + 1))
		lw live "$URI" "$lround" || die "live round $lround: the NBD client failed"
		capture "$T/l$lround.img"
		id=$(ra --json checkpoint web01 --label "l$lround" | jget point) ||
			die "checkpoint after live round $lround"
		ra --json status web01 >"$T/st$lround.json"
		IMG[$id]=$T/l$lround.img
		WHAT[$id]="live round $lround"
		p3+=("$id")
	done
}
# behind FIRST LAST: per round, what the DR site had acknowledged when the
# next round began; fails unless every round but LAST was still unshipped
behind() {
	python3 -c 'import json, sys
first, last, t = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
ids, n = sys.argv[4:], 0
for k in range(first, last + 1):
    v = json.load(open("%s/st%d.json" % (t, k)))["vms"][0]
    pt = int(ids[k - 1])
    n += k < last and v["last_point"] < pt
    print("round %d, point %d: the DR site had point %d, seq %d of %d" % (
        k, pt, v["last_point"], v["acked_seq"], v["journal_seq"]))
print("%d of %d rounds were overwritten before they were shipped" % (n, last - first))
sys.exit(0 if n == last - first else 1)' "$1" "$2" "$T" "${p3[@]}"
}
t3=$SECONDS
live_rounds 10
wait_replica_point "${p3[9]}" || die "point ${p3[9]} did not reach the DR site"
behind 1 10 || true
for id in "${p3[@]:0:10}"; do
	fo_check "$id" "${IMG[$id]}" "point $id (${WHAT[$id]}, shipping live) fails over to the primary's bytes"
done
# again with shipping surely behind: the rounds come faster than 16 MiB/s
stop_a
BANDWIDTH=${LW_BANDWIDTH:-16M} write_configs
start_a
wait_replicating || die "site-a did not resume replicating after the restart"
live_rounds 8
check "with bandwidth ${LW_BANDWIDTH:-16M}, each round is overwritten before it is shipped" \
	behind 11 18
cat "$T/check.out"
wait_replica_point "${p3[17]}" || die "point ${p3[17]} did not reach the DR site"
for id in "${p3[@]:10}"; do
	fo_check "$id" "${IMG[$id]}" "point $id (${WHAT[$id]}, shipping throttled) fails over to the primary's bytes"
done
stop_a
write_configs
start_a
wait_replicating || die "site-a did not resume replicating after the restart"
lcaps=()
for k in $(seq "$lround"); do lcaps+=("$T/l$k.img"); done
check "the captures hold the ${#p3[@]} rounds as written" \
	lw lmodel "$T/pre3.img" "${lcaps[@]}"
echo "     part 3 took $((SECONDS - t3)) s"

# 4. a clean stop of the primary while a client streams large writes,
#    shipping live, points cut meanwhile
t4=$SECONDS
capture "$T/pre4.img"
start_writer "$T/flushed4.log" "$T/cut4.txt"
sleep 2
check "shipping is live as the primary is stopped" \
	test "$(ra --json status web01 | jget vms 0 state)" = replicating
ra --json status web01 >"$T/st4.json"
logpos=$(wc -c <"$T/a.log")
# stop_a, keeping its exit status, bounded
ts=$(date +%s%N)
kill "$A_PID"
for _ in $(seq 600); do
	kill -0 "$A_PID" 2>/dev/null || break
	sleep 0.1
done
if kill -0 "$A_PID" 2>/dev/null; then
	not_ok "the primary stops within 60 s of SIGTERM"
	kill -9 "$A_PID"
fi
arc=0
wait "$A_PID" || arc=$?
A_PID=
python3 -c 'import json, sys
v = json.load(open(sys.argv[1]))["vms"][0]
print("     as it was stopped the DR site had point %d, seq %d of %d; it stopped in %d ms" % (
    v["last_point"], v["acked_seq"], v["journal_seq"], int(sys.argv[2]) // 1000000))' \
	"$T/st4.json" "$(($(date +%s%N) - ts))"
check "the primary exits 0 on SIGTERM" test "$arc" = 0
touch "$T/stop"
wait "$cpid" || true
wstatus=0
wait "$wpid" || wstatus=$?
check "the client was still writing when the primary stopped" test "$wstatus" = 0
start_a
wait_replicating || die "site-a did not resume replicating after the stop"
check "no sanitizer report from the stop and the restart" \
	sh -c "! tail -c +$((logpos + 1)) '$T/a.log' | grep -E 'Sanitizer|runtime error'"
[ -z "${KEEP_TMP:-}" ] || { echo "     site-a's log from the stop:"; tail -c +$((logpos + 1)) "$T/a.log" | sed 's/^/     | /'; }
capture "$T/after4.img"
check "after the stop the primary holds every flushed write" \
	lw flushed "$T/flushed4.log" "$T/pre4.img" "$T/after4.img"
id=$(ra checkpoint web01) || die "no point after the stop"
wait_replica_point "$id" || die "point $id, cut after the stop, did not reach the DR site"
dr_settled web01
mapfile -t cut4 <"$T/cut4.txt"
echo "points cut during the writes: ${cut4[*]}"
check "every point the primary returned is listed on the DR site" listed "$id" "${cut4[@]}"
fo_check "$id" "$T/after4.img" "after the stop: point $id fails over to the primary's bytes"
during=()
for c in "${cut4[@]}"; do
	if fo_copy "$c" "$T/s$c.img"; then
		during+=("$T/s$c.img")
	else
		not_ok "after the stop: point $c fails over"
	fi
done
check "the ${#during[@]} points cut during the writes and the restarted primary follow the writes in order" \
	lw prefix "$T/flushed4.log" "$T/pre4.img" "$T/after4.img" "${during[@]}"
cat "$T/check.out"
echo "     part 4 took $((SECONDS - t4)) s"
finish
