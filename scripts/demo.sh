#!/bin/bash
# demo.sh: install what is missing, build, and show two sites on this
# machine protecting a VM disk: a private sshd on 127.0.0.1 stands for the
# WAN, two replicad daemons for the sites.  A real NBD client writes
# through the primary's export; recovery points appear on the DR site;
# failover to an older point returns the bytes the primary held then.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/deps.sh
./scripts/build.sh build
BIN=$PWD/build/bin
. tests/integration/functions.sh

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

say "site-a (primary) and site-b (DR), linked by sshd on 127.0.0.1"
two_sites_setup 256M 30s "1h:all, 24h:1h, 7d:1d"
echo "configs: $T/a.conf $T/b.conf"
sed -n '/\[vm web01\]/,$p' "$T/a.conf"
URI=$(URI_A)
echo "the VM disk is served at $URI"

say "initial copy done: replica status on site-b"
rb status

declare -A SUM
for round in 1 2 3; do
	say "round $round: qemu-io writes through the primary's NBD export"
	qemu-io -f raw -c "write -P $((round * 17)) $((round * 8))M 4M" \
		-c "write -P $((round * 5)) 100M 64k" "$URI" | grep -v '^ops'
	id=$(ra checkpoint web01 --label "demo round $round" --wait)
	SUM[$id]=$(sha256sum <"$T/a/web01.img" | cut -d' ' -f1)
	echo "point $id is durable on site-b; primary disk sha256 ${SUM[$id]}"
done

say "recovery history on site-b: replica points web01"
rb points web01

first=$(rb --json points web01 | jget points 1 id)
say "unplanned failover to point $first: replica failover web01 --point $first"
rb --json failover web01 --point "$first" | tee "$T/failover.json"
path=$(jget disks 0 path <"$T/failover.json")
got=$(sha256sum <"$path" | cut -d' ' -f1)
echo "sha256 of the failed-over disk: $got"
echo "sha256 on the primary at point $first: ${SUM[$first]}"
[ "$got" = "${SUM[$first]}" ] && echo "MATCH: the DR disk holds exactly point $first" ||
	{ echo "MISMATCH"; exit 1; }

say "cancel: the replica returns to the latest point and replication goes on"
rb cancel web01
rb status web01
say "primary status"
ra status web01
say "firewall rules for site-b (replica firewall)"
rb firewall | head -n 20
echo
echo "demo done (logs were in $T; removed on exit)"
