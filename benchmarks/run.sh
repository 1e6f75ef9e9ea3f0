#!/usr/bin/env bash
# Runs every benchmark -count=10 (COUNT to change) and prints benchstat
# tables that compare reuse with the stdlib and the peers in the same run:
# one column per implementation, with the ratio to the first (net).
# Then counts setsockopt calls per accepted connection with strace.
#
# Usage: benchmarks/run.sh            (about 7 minutes)
#        COUNT=3 benchmarks/run.sh    (quicker, noisier)
set -euo pipefail
cd "$(dirname "$0")"
count=${COUNT:-10}
out=${OUT:-$(mktemp -d)/bench.txt}
benchstat="go run golang.org/x/perf/cmd/benchstat@v0.0.0-20260908200009-22c9c6c9d4da"

echo "# $(uname -sr), $(nproc) cores, $(go version | cut -d' ' -f3), load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "# raw results: $out"
{
	# The census first, while the table holds only its own sockets: the
	# other benchmarks leave tens of thousands of TIME_WAIT entries behind,
	# which every netlink query (ss's too) then walks. It is internal to the
	# library's module, so it runs from there.
	(cd ../internal/census && go test -run '^$' -bench '^(BenchmarkSockets|BenchmarkBusyPort)$' -count="$count" .)
	go test -run '^$' -bench '^BenchmarkListen$' -benchmem -count="$count" .
	go test -run '^$' -bench '^BenchmarkListenInUse$' -benchmem -count="$count" .
	# 5000 connections a run: each run of net-default leaves that many
	# TIME_WAIT entries, and the kernel keeps tcp_max_tw_buckets at most.
	go test -run '^$' -bench '^BenchmarkAcceptClose$' -benchtime=5000x -benchmem -count="$count" .
	go test -run '^$' -bench '^BenchmarkRebind$' -benchmem -count="$count" .
	# 300 Upgrades a run, a chain of 300 processes, so that p99 is not one sample.
	go test -run '^$' -bench '^BenchmarkUpgrade$' -benchtime=300x -count="$count" .
} > "$out"

echo
echo "## Listen: one Listen+Close on 127.0.0.1:0; columns are implementations, ratios against net"
$benchstat -filter '.name:Listen' -col /impl "$out"
echo
echo "## ListenInUse: a Listen that fails on a port a live listener holds, 2,000 fds open; ratios against net"
$benchstat -filter '.name:ListenInUse' -col /impl "$out"
echo
echo "## AcceptClose: server closes first; ratios against a per-connection SetLinger(0)"
$benchstat -filter '.name:AcceptClose' -col '/impl@(net-setlinger-per-conn net-default reuse-rst)' "$out"
echo
echo "## Rebind: Listen+Close on a port that holds N TIME_WAIT entries"
$benchstat -filter '.name:Rebind' -col /impl "$out"
echo
echo "## Upgrade until the new process's Ready (mean, p50, p99); ratios against tableflip"
$benchstat -filter '.name:Upgrade' -col /impl "$out"
echo
echo "## census.Read(port) against ss -tanH '( sport = :P )' on the same table (ratio-vs-ss)"
$benchstat -filter '.name:Sockets' "$out"
echo
echo "## census of a port with 15,000 connections: Read with owners, netlink and /proc alone"
$benchstat -filter '.name:BusyPort' -col /src "$out"

echo
echo "## setsockopt calls per accepted connection (strace -c; Go's Accept itself makes some)"
if ! command -v strace > /dev/null; then
	echo "strace not installed: apt-get install strace"
	exit 0
fi
bin=$(mktemp -d)/bench.test
go test -c -o "$bin" .
n=2000
for impl in net-default net-setlinger-per-conn reuse-rst; do
	calls=$(strace -f -qq -c -e trace=setsockopt "$bin" -test.run '^$' \
		-test.bench "^BenchmarkAcceptClose/impl=$impl\$" -test.benchtime "${n}x" 2>&1 >/dev/null |
		awk '$NF == "setsockopt" {print $4}')
	# One connection per op, plus the first b.N=1 round; both ends of each
	# connection are in this process.
	awk -v impl="$impl" -v c="${calls:-0}" -v n="$n" 'BEGIN { printf "%-24s %6d calls  %.2f per connection (client and server)\n", impl, c, c / (n + 1) }'
done
