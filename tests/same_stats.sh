#!/bin/sh
# same_stats.sh DIR... - the statistics trees written by test_forward with different rank counts
# hold the same files with the same bytes.
set -eu
ref=$1
shift
n=$(cd "$ref" && find . -name '*.h5' | wc -l)
[ "$n" -gt 0 ] || { echo "no statistics in $ref" >&2; exit 1; }
for d in "$@"; do
    (cd "$ref" && find . -type f | sort) >"$d.list.ref"
    (cd "$d" && find . -type f | sort) >"$d.list"
    cmp "$d.list.ref" "$d.list" || { echo "different file sets in $ref and $d" >&2; exit 1; }
    while read -r f; do
        cmp "$ref/$f" "$d/$f" || { echo "$f differs between $ref and $d" >&2; exit 1; }
    done <"$d.list"
    echo "$d: $(wc -l <"$d.list") files identical to $ref"
done
