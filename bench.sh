#!/bin/sh
# bench.sh: blkdom's speed against the kernel's xen-blkback, and the
# simulation benchmarks, written into bench/:
#   speed.md     the fio table (throughput or IOPS, blkdom / kernel, in dom0
#                and in a driver domain) and the CPU table, naming the
#                machine, the kernels, the date and the commit measured
#   speed.svg    the chart of the same
#   metrics.txt  every number the speed run recorded
#   sim.txt      go test -bench output for ./blkback, for benchstat
# The speed run is the end-to-end scenario TestSpeed (real Xen 4.17 under
# QEMU, one boot, about 25 minutes on an idle 2-core machine); run nothing
# else heavy beside it. BENCH_COUNT (default 6) is the simulation
# benchmarks' -count; BLKDOM_E2E_FIO_SECONDS and BLKDOM_E2E_FIO_RAMP set
# each fio job's measured and ramp-up seconds (default 15 and 2);
# BLKDOM_E2E_CACHE moves the e2e download cache (default .cache/e2e).
set -eu
cd "$(dirname "$0")"
scripts/deps.sh
mkdir -p bench
go test -run X -bench . -benchmem -count "${BENCH_COUNT:-6}" ./blkback | tee bench/sim.txt
BLKDOM_E2E=1 BLKDOM_BENCH_DIR="$PWD/bench" go test -count=1 -timeout 60m -v -run 'TestSpeed$' ./e2e
cp "${BLKDOM_E2E_CACHE:-.cache/e2e}/run/metrics.txt" bench/metrics.txt
echo "bench.sh: bench/speed.md, bench/speed.svg, bench/metrics.txt, bench/sim.txt"
