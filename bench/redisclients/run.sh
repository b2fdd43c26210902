#!/bin/sh
# Runs the benchmarks in alternated rounds (one test binary, -count 1 a
# round, the clients' order reversed every other round) and summarizes
# medians and ranges. Usage: ./run.sh [rounds] [benchtime] [bench regexp]
# [test binary flags, such as -sub-interval=20ms]
set -e
cd "$(dirname "$0")"
rounds=${1:-6}
benchtime=${2:-2000x}
bench=${3:-.}
if [ $# -ge 3 ]; then shift 3; else shift $#; fi
out=${OUT:-$(mktemp -d)}
go test -c -o "$out/redisclients.test" .
: > "$out/bench.txt"
i=1
while [ "$i" -le "$rounds" ]; do
	rev=false
	if [ $((i % 2)) -eq 0 ]; then rev=true; fi
	"$out/redisclients.test" -test.run '^$' -test.bench "$bench" -test.benchtime "$benchtime" -test.count 1 -reverse=$rev "$@" | tee -a "$out/bench.txt"
	i=$((i + 1))
done
go run ./benchsum < "$out/bench.txt"
echo "raw output: $out/bench.txt"
