#!/usr/bin/env bash
# Instructions per packet on the host side of the rings (callgrind), beyond the copies:
# inclusive instructions of host_write / host_read per packet, minus what memcpy (the
# payload copies) accounts for inside them.   Usage: bench/ring_instructions.sh [N] [SIZE]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
n=${1:-20000}
size=${2:-64}
bin=build/bench/ring_cost
out=$(mktemp -d)
valgrind --tool=callgrind --callgrind-out-file="$out/cg" "$bin" "$n" "$size" >/dev/null 2>"$out/log"
callgrind_annotate --inclusive=yes --threshold=100 "$out/cg" >"$out/incl" 2>/dev/null
# The function summary lines look like "  4,323,390 (41.26%)  bench/ring_cost.cpp:host_write(...) [...]".
ir_of() { grep -E "^ *[0-9,]+ \( *[0-9.]+%\) +$1" "$out/incl" | head -n 1 | awk '{gsub(",", "", $1); print $1}'; }
write=$(ir_of 'bench/ring_cost.cpp:host_write')
read=$(ir_of 'bench/ring_cost.cpp:host_read')
# libc's memcpy: the payload and packet copies (nearly all of its calls come from the loop).
memcpy=$(ir_of '.*:__mem(cpy|move)[a-z_]*')
echo "packets: $n x $size bytes"
echo "host_write: $((write / n)) instructions per packet (inclusive)"
echo "host_read:  $((read / n)) instructions per packet (inclusive)"
echo "memcpy (all callers): $((memcpy / n)) instructions per packet"
echo "beyond the copies: $(((write + read - memcpy) / n)) instructions per packet for write + read"
rm -rf "$out"
