#!/bin/sh
# Lists C functions longer than LIMIT lines (default 120) and files longer than FILE_LIMIT
# lines (default 800) in the given files or folders (default: the layers and cmd/).
# Functions are found by the kernel style this tree uses: a body opens with "{" in column 0
# and ends with "}" in column 0; the name is the last identifier before "(" above it.
# usage: scripts/funclen.sh [-l LIMIT] [-f FILE_LIMIT] [PATH...]
LIMIT=120 FILE_LIMIT=800
while getopts l:f: o; do
	case $o in
	l) LIMIT=$OPTARG ;;
	f) FILE_LIMIT=$OPTARG ;;
	*) exit 2 ;;
	esac
done
shift $((OPTIND - 1))
[ $# -gt 0 ] || set -- core shm uring gpu cmd
find "$@" -name '*.c' | sort | while read -r f; do
	awk -v limit="$LIMIT" -v flimit="$FILE_LIMIT" -v file="$f" '
	/^[A-Za-z_].*\(/ { sig = $0 }
	/^\{/ { start = NR; name = sig; sub(/\(.*/, "", name); n = split(name, w, /[ *]+/); name = w[n] }
	/^\}/ && start { len = NR - start + 1; if (len > limit) printf "%s:%d: %s is %d lines\n", file, start, name, len; start = 0 }
	END { if (NR > flimit) printf "%s: %d lines\n", file, NR }
	' "$f"
done
