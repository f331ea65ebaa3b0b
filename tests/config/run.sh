#!/bin/sh
# run.sh REPLICAD_BINARY: check `replicad -n -c FILE` against the fixtures here.
#   good*.conf  must load (exit 0) and print exactly good*.expected
#   bad-*.conf  must fail with exit 1 and an error containing the text of
#               its first line "# expect: TEXT"
# Prints "N passed, M failed"; exits 1 if anything failed.
set -u

if [ $# -ne 1 ]; then
	echo "usage: $0 REPLICAD_BINARY" >&2
	exit 2
fi
bin=$1
dir=$(cd "$(dirname "$0")" && pwd)
tmp=$(mktemp -d) || exit 1
trap 'rm -rf "$tmp"' EXIT INT TERM
pass=0
fail=0

ok() { pass=$((pass + 1)); }
ko() { fail=$((fail + 1)); echo "FAIL: $*" >&2; }

for conf in "$dir"/good*.conf; do
	[ -e "$conf" ] || continue
	name=$(basename "$conf" .conf)
	expected=$dir/$name.expected
	"$bin" -n -c "$conf" >"$tmp/out" 2>"$tmp/err"
	rc=$?
	if [ $rc -ne 0 ]; then
		ko "$name: exit $rc: $(cat "$tmp/err")"
	elif ! diff -u "$expected" "$tmp/out" >"$tmp/diff"; then
		ko "$name: output differs from $name.expected:"
		cat "$tmp/diff" >&2
	else
		ok
		# The normalized output must itself load and print the same.
		"$bin" -n -c "$tmp/out" >"$tmp/out2" 2>"$tmp/err"
		rc=$?
		if [ $rc -ne 0 ]; then
			ko "$name (reloaded): exit $rc: $(cat "$tmp/err")"
		elif ! diff -u "$tmp/out" "$tmp/out2" >"$tmp/diff"; then
			ko "$name (reloaded): output is not stable:"
			cat "$tmp/diff" >&2
		else
			ok
		fi
	fi
done

for conf in "$dir"/bad-*.conf; do
	[ -e "$conf" ] || continue
	name=$(basename "$conf" .conf)
	want=$(sed -n '1s/^# expect: //p' "$conf")
	if [ -z "$want" ]; then
		ko "$name: first line is not '# expect: TEXT'"
		continue
	fi
	"$bin" -n -c "$conf" >"$tmp/out" 2>"$tmp/err"
	rc=$?
	if [ $rc -ne 1 ]; then
		ko "$name: exit $rc, want 1"
	elif ! grep -qF -- "$want" "$tmp/err"; then
		ko "$name: stderr lacks '$want': $(cat "$tmp/err")"
	elif [ -s "$tmp/out" ]; then
		ko "$name: printed a config on stdout"
	else
		ok
	fi
done

echo "$pass passed, $fail failed"
[ $fail -eq 0 ]
