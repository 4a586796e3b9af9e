#!/bin/sh
# same_digest.sh DIR... - the demo's expert digest and baseline perplexity are identical for every rank count.
set -eu
first=""
for d in "$@"; do
    [ -s "$d.digest" ] || { echo "no digest from $d" >&2; exit 1; }
    cur=$(cat "$d.digest")
    echo "$d: $cur"
    [ -z "$first" ] && first=$cur
    [ "$cur" = "$first" ] || { echo "digest differs: $cur vs $first" >&2; exit 1; }
done
