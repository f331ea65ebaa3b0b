#!/usr/bin/python3
"""report.py: the tables of bench/run.sh.

  report.py RESULTS.tsv NOTES.tsv TOTAL_SECS LOAD_BEFORE LOAD_AFTER
            QEMU_NBD NBDKIT FIO RSYNC OPENSSH LIBSSH2 COMMIT

RESULTS.tsv rows: bench, metric, unit, replicad figure, peer, peer figure
("-" where there is none, "FAILED" where the measurement failed).
Prints a plain table per benchmark, the notes, then one markdown table.
"""
import datetime
import os
import platform
import sys

ORDER = ["nbd", "ssh", "cycle", "failover"]
TITLES = {
    "nbd": "NBD write path (fio --ioengine=nbd)",
    "ssh": "Shipping over SSH",
    "cycle": "Replication cycle vs rsync",
    "failover": "Failover / cancel",
}


def num(s):
    try:
        return float(s)
    except ValueError:
        return None


def ratio(ours, peer):
    a, b = num(ours), num(peer)
    if a is None or b is None or b == 0:
        return "-"
    return "%.2fx" % (a / b)


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "?"


def main():
    (res, notes, total, load0, load1, qemu, nbdkit, fio, rsync, openssh,
     libssh2, commit) = sys.argv[1:13]
    rows = []
    with open(res) as f:
        for line in f:
            p = line.rstrip("\n").split("\t")
            if len(p) == 6:
                rows.append(p)
    nts = []
    with open(notes) as f:
        for line in f:
            p = line.rstrip("\n").split("\t", 1)
            if len(p) == 2:
                nts.append(p)

    benches = [b for b in ORDER if any(r[0] == b for r in rows)
               or any(n[0] == b for n in nts)]
    hdr = ["metric", "unit", "replicad", "peer", "peer figure",
           "replicad/peer"]
    print()
    for b in benches:
        print("== %s" % TITLES.get(b, b))
        tab = [hdr] + [[r[1], r[2], r[3], r[4], r[5], ratio(r[3], r[5])]
                       for r in rows if r[0] == b]
        w = [max(len(t[i]) for t in tab) for i in range(len(hdr))]
        for i, t in enumerate(tab):
            print("  " + "  ".join(c.ljust(w[j]) if j in (0, 1, 3)
                                   else c.rjust(w[j])
                                   for j, c in enumerate(t)))
            if i == 0:
                print("  " + "  ".join("-" * x for x in w))
        for n in nts:
            if n[0] == b:
                print("  * " + n[1])
        print()

    date = datetime.datetime.now(datetime.timezone.utc).strftime(
        "%Y-%m-%d %H:%M UTC")
    print("== Markdown (README)")
    print()
    print("Measured %s on `%s`, %d CPUs (`nproc`), %s; replicad %s; "
          "%s; %s; %s; %s; %s; libssh2 %s. Load average before/after: "
          "%s / %s. Full run: %.0f s. Ratio = replicad / peer (higher is "
          "better for IOPS and MB/s, lower is better for s and ms)."
          % (date, platform.machine(), os.cpu_count() and
             len(os.sched_getaffinity(0)), cpu_model(), commit, fio, qemu,
             nbdkit, rsync, openssh, libssh2, load0, load1, float(total)))
    print()
    print("| Benchmark | Metric | Unit | replicad | Peer | Peer figure "
          "| replicad/peer |")
    print("|---|---|---|--:|---|--:|--:|")
    for b in benches:
        for r in rows:
            if r[0] == b:
                print("| %s | %s | %s | %s | %s | %s | %s |" % (
                    b, r[1], r[2], r[3], r[4], r[5], ratio(r[3], r[5])))
    print()
    for b in benches:
        for n in nts:
            if n[0] == b:
                print("- %s: %s" % (b, n[1].replace("|", "\\|")))


if __name__ == "__main__":
    main()
