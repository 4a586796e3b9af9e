#!/bin/sh
# same_output.sh DIR... - the outputs (and checkpoints) that tests/output_test.sh wrote with different rank
# counts hold the same files with the same bytes: every *.out and *.ck directory of the first DIR is
# compared with the others'.
set -eu
ref=$1
shift
n=$(cd "$ref" && find . -path './*.out/*.h5' | wc -l)
[ "$n" -gt 0 ] || { echo "no output shards in $ref" >&2; exit 1; }
for d in "$@"; do
    (cd "$ref" && find ./*.out ./*.ck -type f | sort) >"$d.list.ref"
    (cd "$d" && find ./*.out ./*.ck -type f | sort) >"$d.list"
    cmp "$d.list.ref" "$d.list" || { echo "different file sets in $ref and $d" >&2; exit 1; }
    while read -r f; do
        cmp "$ref/$f" "$d/$f" || { echo "$f differs between $ref and $d" >&2; exit 1; }
    done <"$d.list"
    echo "$d: $(wc -l <"$d.list") files ($n shards) identical to $ref"
done
