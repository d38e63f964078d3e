# steps.sh: the steps the harness runs in dom0, one shell function each,
# sourced by the agent for every "@@RUN" line. A step prints what it did,
# "@@E2E METRIC <name>=<value>@@" lines for numbers the harness reports, and
# on failure the console logs that explain it; it returns non-zero on failure.
# Work files live in $W (dom0's tmpfs root).
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
export LD_LIBRARY_PATH=/lib/x86_64-linux-gnu
W=/e2e/work

up() { cut -d' ' -f1 /proc/uptime; }

# since T: seconds elapsed since uptime T, two decimals.
since() { awk -v a="$1" -v b="$(up)" 'BEGIN { printf "%.2f", b - a }'; }

metric() { echo "@@E2E METRIC $1=$2@@"; }

conslog() { echo "/var/log/xen/guest-$1.log"; }

# guestbad matches a test guest's console lines that mean it failed: its own
# fail marker, a panic, or blkfront or the block layer giving up on a disk.
guestbad='@@GUEST fail|Kernel panic|disabled for further use|I/O error|response has wrong'

# waitfor FILE REGEX SECONDS [BADREGEX]: poll FILE until a line matches
# REGEX; fail at once if one matches BADREGEX, or after SECONDS. It looks
# every $WAITFOR_POLL seconds (default 0.25).
waitfor() {
	f=$1 re=$2 bad=${4:-}
	wt0=$(up) # not t0: callers time whole steps with it
	while :; do
		if [ -f "$f" ]; then
			grep -qE "$re" "$f" && return 0
			if [ -n "$bad" ] && grep -qE "$bad" "$f"; then
				echo "e2e: $f: $(grep -E "$bad" "$f" | head -n 3)"
				return 1
			fi
		fi
		if awk -v a="$wt0" -v b="$(up)" -v l="$3" 'BEGIN { exit !(b - a >= l) }'; then
			echo "e2e: no /$re/ in $f after $3 s"
			return 1
		fi
		sleep "${WAITFOR_POLL:-0.25}"
	done
}

# show FILE...: print files, framed, for a failure report.
show() {
	for f in "$@"; do
		echo "----- $f"
		[ -f "$f" ] && cat "$f"
		echo "----- end of $f"
	done
}

# conscut FILE: a domain's console log without most of its kernel's boot
# messages: the lines that are not kernel messages (the domain's own), the
# kernel messages about disks or trouble, and the last 30 lines as they are.
conscut() {
	k='^\[[^]]*\] \[ *[0-9.]+\] '
	echo "----- $1: lines not from the kernel (last 150)"
	grep -vE "$k" "$1" | tail -n 150
	echo "----- $1: kernel lines about disks or trouble (last 40)"
	grep -E "$k" "$1" | grep -v '\] blkdom: ' |
		grep -iE 'xvd|blkfront|blkback|ext4|error|warn|fail|bug|oops|panic|segfault|trace' | tail -n 40
	echo "----- $1: last 30 lines"
	tail -n 30 "$1"
	echo "----- end of $1"
}

# dump NAME...: everything that explains a failure around domains NAME: their
# configurations and xl logs, the consoles of NAME and of every running
# domain (a guest's failure may be its backend's), hotplug, blkdom serve and
# xenstored logs, xenstored's refusals, the vbd trees in xenstore, and the
# kernel and hypervisor logs.
dump() {
	for n in "$@"; do
		show "$W/$n.cfg"
		echo "----- $W/$n.xl.log, without the domain builder's details"
		grep -v 'domainbuilder: detail' "$W/$n.xl.log" 2>/dev/null
		echo "----- end of $W/$n.xl.log"
	done
	show /var/log/xen/block-hotplug.log "$W/serve.log" /var/log/xen/xenstored.log
	if [ -f "$W/serve-killed.log" ]; then
		echo "----- warnings and errors of the blkdom serve processes killed before (serve-killed.log)"
		grep -E 'level=(WARN|ERROR)' "$W/serve-killed.log" | tail -n 40
	fi
	[ -f /var/log/xen/xenstored-trace.log ] || echo "----- no xenstored trace (BLKDOM_E2E_XSTRACE=1 on the host makes one)"
	echo "----- requests xenstored refused (other than ENOENT), with what preceded them"
	grep -B 3 -E 'ERROR \((EACCES|EINVAL|E2BIG|EQUOTA|ENOSPC|EPERM|EBADF|ENOMEM)' \
		/var/log/xen/xenstored-trace.log 2>/dev/null | tail -n 40
	echo "----- the last 60 changes requested under driver domains' backend/vbd (toolstack's and backend's)"
	grep -E '^IN .* (WRITE|RM|MKDIR|SET_PERMS) \(/local/domain/[1-9][0-9]*/backend/vbd' \
		/var/log/xen/xenstored-trace.log 2>/dev/null | grep -v /statistics/ | tail -n 60
	if ! pidof xenstored >/dev/null; then
		echo "----- xenstored is DEAD; the last 60 requests it traced:"
		tail -n 60 /var/log/xen/xenstored-trace.log 2>/dev/null
		for f in /var/log/xen/guest-*.log; do
			conscut "$f"
		done
		return
	fi
	names=$(xl list | awk 'NR > 2 { print $1 }')
	for n in $(echo "$@" $names | tr ' ' '\n' | sort -u); do
		[ -f "$(conslog "$n")" ] && conscut "$(conslog "$n")"
	done
	ddtrace
	echo "----- xl list"
	xl list
	echo "----- xenstore backend and device trees"
	for d in $(xenstore-list /local/domain); do
		for k in backend/vbd device/vbd; do
			xenstore-exists "/local/domain/$d/$k" 2>/dev/null &&
				xenstore-ls -f "/local/domain/$d/$k" | grep -v /statistics/
		done
	done
	echo "----- dom0 dmesg (last 40 lines)"
	dmesg | tail -n 40
	echo "----- xl dmesg (last 20 lines)"
	xl dmesg | tail -n 20
}

# ddtrace: the last 50 xenstore requests and replies (statistics and the
# once-a-second listings left out) of each running driver domain's blkdom,
# whose connection is the one that watches that domain's backend/vbd: what
# it last asked and was told.
ddtrace() {
	t=/var/log/xen/xenstored-trace.log
	[ -f "$t" ] || return 0
	for id in $(xl list | awk 'NR > 2 && $2 != 0 { print $2 }'); do
		c=$(grep -E "^IN [^ ]+ [0-9]+ [0-9:]+ WATCH \(/local/domain/$id/backend/vbd " "$t" |
			tail -n 1 | cut -d' ' -f2)
		[ -n "$c" ] || continue
		echo "----- domain $id's xenstore connection $c: its last 50 requests and replies"
		grep -F " $c " "$t" | grep -vE '/statistics/| DIRECTORY \(' | tail -n 50
	done
}

# mkimg PATH MIB: a sparse raw image.
mkimg() {
	rm -f "$1"
	truncate -s "${2}M" "$1" && echo "image $1: $2 MiB"
}

# writecfg NAME KERNEL-ARGS RAMDISK EXTRA-LINE DISK...: an xl config for a
# PV domain booted from the shared kernel (or $E2E_KERNEL), with $E2E_VCPUS
# vCPUs (default 1) and $E2E_MEMORY MiB (default 256).
writecfg() {
	n=$1 args=$2 rd=$3 more=$4
	shift 4
	{
		echo "name=\"$n\""
		echo 'type="pv"'
		echo "kernel=\"${E2E_KERNEL:-/boot/vmlinuz}\""
		echo "ramdisk=\"$rd\""
		echo "extra=\"console=hvc0 $args\""
		echo "memory=${E2E_MEMORY:-256}"
		echo "vcpus=${E2E_VCPUS:-1}"
		echo 'on_crash="preserve"'
		[ -n "$more" ] && echo "$more"
		printf 'disk=['
		sep=
		for d in "$@"; do
			printf "%s'%s'" "$sep" "$d"
			sep=', '
		done
		echo ']'
	} >"$W/$n.cfg"
	cat "$W/$n.cfg"
}

# guest_create NAME DISK...: start a test guest whose disks are the xl disk
# specifications DISK (vdev=xvda, xvdb, ... in order); the guest tests each.
# $E2E_GUEST_ARGS adds kernel arguments (e2e.features=..., or for diagnosis
# e2e.blkfront=...); $E2E_VCPUS and $E2E_MEMORY set its vCPUs and memory,
# $E2E_RAMDISK its image (default /boot/guest.cpio.gz).
guest_create() {
	n=$1
	shift
	vdevs=$(for d in "$@"; do echo "$d" | tr , '\n' | sed -n 's/^vdev=//p'; done | tr '\n' , | sed 's/,$//')
	writecfg "$n" "quiet e2e.disks=$vdevs${E2E_GUEST_ARGS:+ $E2E_GUEST_ARGS}" \
		"${E2E_RAMDISK:-/boot/guest.cpio.gz}" "" "$@"
	rm -f "$(conslog "$n")"
	t0=$(up)
	echo "$t0" >"$W/$n.t0"
	if ! xl -v create "$W/$n.cfg" >"$W/$n.xl.log" 2>&1; then
		echo "e2e: xl create $n failed"
		dump "$n"
		return 1
	fi
	metric "xl_create_seconds_$n" "$(since "$t0")"
}

# guest_wait_io NAME SECONDS: wait for the guest's first verified I/O.
guest_wait_io() {
	if ! waitfor "$(conslog "$1")" '@@GUEST io-ok' "$2" "$guestbad"; then
		dump "$1"
		return 1
	fi
	metric "create_to_first_io_seconds_$1" "$(since "$(cat "$W/$1.t0")")"
}

# guest_wait_done NAME SECONDS: wait for all of the guest's checks to pass.
guest_wait_done() {
	if ! waitfor "$(conslog "$1")" '@@GUEST done rc=0@@' "$2" "$guestbad"; then
		dump "$1"
		return 1
	fi
	grep -E '@@GUEST|xvd[a-z]+:' "$(conslog "$1")"
	metric "create_to_done_seconds_$1" "$(since "$(cat "$W/$1.t0")")"
}

# domain_destroy NAME: xl destroy, and check the domain is gone.
domain_destroy() {
	t0=$(up)
	xl destroy "$1"
	rc=$?
	metric "destroy_seconds_$1" "$(since "$t0")"
	if [ $rc -ne 0 ] || xl domid "$1" >/dev/null 2>&1; then
		echo "e2e: xl destroy $1 failed (rc=$rc)"
		dump "$1"
		return 1
	fi
}

# verify_image IMAGE NAME VDEV: after the guest is gone, the region it wrote
# through VDEV has the checksum it reported, and its ext4 is clean.
verify_image() {
	img=$1 n=$2 v=$3
	want=$(sed -n "s/.*@@GUEST io-ok $v md5=\([0-9a-f]*\)@@.*/\1/p" "$(conslog "$n")" | tail -n 1)
	got=$(dd if="$img" bs=1M skip=40 count=4 2>/dev/null | md5sum | cut -d' ' -f1)
	echo "$img: region md5 $got, guest $n wrote $want"
	if [ -z "$want" ] || [ "$want" != "$got" ]; then
		echo "e2e: $img: region checksum differs from what $n wrote"
		dump "$n"
		return 1
	fi
	if ! /sbin/e2fsck -f -n "$img"; then
		echo "e2e: $img: the guest's file system is not clean"
		return 1
	fi
}

# kernel_backend: dom0's own xen-blkback serves dom0-backed disks.
kernel_backend() {
	lsmod | grep -q '^xen_blkback' || modprobe xen-blkback
}

# serve_start ARGS...: unload the kernel's blkback and start "blkdom serve"
# in dom0 in the background (log in $W/serve.log).
serve_start() {
	if lsmod | grep -q '^xen_blkback'; then
		rmmod xen-blkback || { echo "e2e: rmmod xen-blkback failed"; return 1; }
	fi
	setsid /e2e/blkdom serve "$@" </dev/null >"$W/serve.log" 2>&1 &
	echo $! >"$W/serve.pid"
	sleep 2
	if ! kill -0 "$(cat "$W/serve.pid")" 2>/dev/null; then
		echo "e2e: blkdom serve exited at once"
		show "$W/serve.log"
		return 1
	fi
	echo "blkdom serve running as pid $(cat "$W/serve.pid")"
}

# serve_stop: stop "blkdom serve" with SIGTERM (SIGKILL after 10 s) and show
# its log.
serve_stop() {
	[ -f "$W/serve.pid" ] || return 0
	pid=$(cat "$W/serve.pid")
	rm -f "$W/serve.pid"
	kill -TERM "$pid" 2>/dev/null
	i=0
	while kill -0 "$pid" 2>/dev/null && [ $i -lt 40 ]; do
		sleep 0.25
		i=$((i + 1))
	done
	rc=0
	if kill -0 "$pid" 2>/dev/null; then
		echo "e2e: blkdom serve ignored SIGTERM for 10 s"
		kill -KILL "$pid"
		rc=1
	fi
	show "$W/serve.log"
	return $rc
}

# serve_kill_restart ARGS...: kill -9 "blkdom serve" and start it again
# with ARGS; the new one must adopt the connected guests (its log says so).
# The killed process's log is added to serve-killed.log, for dump.
serve_kill_restart() {
	pid=$(cat "$W/serve.pid")
	kill -KILL "$pid" || return 1
	while kill -0 "$pid" 2>/dev/null; do sleep 0.05; done
	echo "killed blkdom serve (pid $pid)"
	cat "$W/serve.log" >>"$W/serve-killed.log"
	serve_start "$@" || return 1
	waitfor "$W/serve.log" 'adopted a connected frontend' 60 || { show "$W/serve.log"; return 1; }
	grep -E 'adopted|took over|taking over' "$W/serve.log"
}

# serve_upgrade: put a new file at blkdom's path (a copy of the binary,
# renamed over it, as an upgrade does) and send SIGUSR2: the process execs
# it (same pid), and the new image adopts the connected guests again.
serve_upgrade() {
	pid=$(cat "$W/serve.pid")
	before=$(grep -c 'adopted a connected frontend' "$W/serve.log")
	cp /e2e/blkdom /e2e/blkdom.new && mv /e2e/blkdom.new /e2e/blkdom || return 1
	kill -USR2 "$pid" || return 1
	i=0
	until [ "$(grep -c 'adopted a connected frontend' "$W/serve.log")" -gt "$before" ]; do
		i=$((i + 1))
		if [ $i -gt 240 ] || ! kill -0 "$pid" 2>/dev/null; then
			echo "e2e: no adoption after SIGUSR2"
			show "$W/serve.log"
			return 1
		fi
		sleep 0.25
	done
	kill -0 "$pid" || return 1
	echo "blkdom serve upgraded in place as pid $pid"
	grep -E 'handing over|adopted' "$W/serve.log"
}

# dd_upgrade NAME PATH STATE: write PATH to driver domain NAME's
# blkdom/upgrade and wait for data/blkdom/upgrade/state to read STATE:
# done (its PID 1 exec'd the binary and the new image adopted the guests'
# disks again) or refused (nothing changed).
dd_upgrade() {
	n=$1 log=$(conslog "$1")
	id=$(xl domid "$n") || return 1
	st=/local/domain/$id/data/blkdom/upgrade
	xenstore-rm "$st" 2>/dev/null
	before=$(grep -c 'adopted a connected frontend' "$log")
	xenstore-write "/local/domain/$id/blkdom/upgrade" "$2" || return 1
	i=0
	until [ "$(xenstore-read "$st/state" 2>/dev/null)" = "$3" ]; do
		i=$((i + 1))
		if [ $i -gt 480 ] || grep -qE "$ddbad" "$log"; then
			echo "e2e: upgrade state $(xenstore-read "$st/state" 2>/dev/null), want $3"
			dump "$n"
			return 1
		fi
		sleep 0.25
	done
	xenstore-ls -f "$st"
	if [ "$3" = done ]; then
		i=0
		until [ "$(grep -c 'adopted a connected frontend' "$log")" -gt "$before" ]; do
			i=$((i + 1))
			[ $i -lt 480 ] || { echo "e2e: no adoption after the upgrade"; dump "$n"; return 1; }
			sleep 0.25
		done
	fi
	grep -E 'blkdom is PID 1|upgrad|handing over|adopted|start-up' "$log"
}

# restart_ready NAME SECONDS: wait for guest NAME's restart workload to
# run, and let it write for a few seconds.
restart_ready() {
	waitfor "$(conslog "$1")" '@@GUEST restart-ready' "$2" "$guestbad" || { dump "$1"; return 1; }
	sleep 5
}

# vbd_connected NAME VDEV: both sides of guest NAME's disk VDEV are
# Connected (4).
vbd_connected() {
	gid=$(xl domid "$1") || return 1
	fe=/local/domain/$gid/device/vbd/$(vbdnum "$2")
	be=$(xenstore-read "$fe/backend") || return 1
	f=$(xenstore-read "$fe/state") b=$(xenstore-read "$be/state")
	echo "$1 $2: frontend state $f, backend state $b"
	[ "$f" = 4 ] && [ "$b" = 4 ]
}

# restart_result NAME SECONDS: stop guest NAME's restart workload, wait for
# its verdict and report it as the metrics restart_lost_acked_writes and
# restart_guest_stall_seconds.
restart_result() {
	n=$1 log=$(conslog "$1")
	gid=$(xl domid "$n") || return 1
	xenstore-write "/local/domain/$gid/data/e2e-restart-stop" go || return 1
	waitfor "$log" '@@GUEST done rc=0@@' "$2" "$guestbad" || { dump "$n"; return 1; }
	line=$(grep -o '@@GUEST restart [^@]*@@' "$log")
	echo "$line"
	lost=$(echo "$line" | sed -n 's/.*lost=\([0-9]*\).*/\1/p')
	stall=$(echo "$line" | sed -n 's/.*stall=\([0-9.]*\).*/\1/p')
	grep 'guest-dmesg' "$log"
	metric restart_lost_acked_writes "$lost"
	metric restart_guest_stall_seconds "$stall"
	[ "$lost" = 0 ]
}

# dd_images RAW FS [FILE]: the driver domain's disks: RAW, a 64 MiB raw disk it
# serves as a device, and FS, an ext4 file system holding guest.img, a
# 64 MiB image file it serves after mounting FS (and a copy of FILE).
dd_images() {
	mkimg "$1" 64 || return 1
	rm -rf "$W/fsroot" "$2"
	mkdir -p "$W/fsroot"
	truncate -s 64M "$W/fsroot/guest.img"
	[ -z "$3" ] || cp "$3" "$W/fsroot/" || return 1
	/sbin/mke2fs -q -t ext4 -d "$W/fsroot" "$2" 128M || return 1
	rm -rf "$W/fsroot"
	echo "image $2: ext4 with guest.img"
}

# dd_create NAME RAMDISK RAW FS [KEY=VALUE...]: create the storage driver
# domain paused with RAW as xvdb and FS as xvdc (both served by dom0's kernel
# blkback), tell it to mount xvdc on /mnt/images through xenstore, write each
# KEY=VALUE under its blkdom/ directory too (ebpf=1), and unpause it. FS "-"
# gives it no xvdc and nothing to mount.
# Its kernel logs at debug level so that blkdom's lines (which it also
# copies to the kernel log) appear on the console with kernel time stamps.
dd_create() {
	n=$1 ram=$2 raw=$3 fs=$4
	shift 4
	if [ "$fs" = - ]; then
		writecfg "$n" "loglevel=8" "$ram" "driver_domain=1" \
			"format=raw,vdev=xvdb,access=rw,target=$raw"
	else
		writecfg "$n" "loglevel=8" "$ram" "driver_domain=1" \
			"format=raw,vdev=xvdb,access=rw,target=$raw" \
			"format=raw,vdev=xvdc,access=rw,target=$fs"
	fi
	rm -f "$(conslog "$n")"
	t0=$(up)
	if ! xl -v create -p "$W/$n.cfg" >"$W/$n.xl.log" 2>&1; then
		echo "e2e: xl create -p $n failed"
		dump "$n"
		return 1
	fi
	id=$(xl domid "$n")
	m=/local/domain/$id/blkdom/mounts/0
	if [ "$fs" != - ]; then
		xenstore-write "$m/device" /dev/xvdc "$m/mountpoint" /mnt/images "$m/fstype" ext4 \
			"$m/options" "" || return 1
	fi
	for kv in "$@"; do
		xenstore-write "/local/domain/$id/blkdom/${kv%%=*}" "${kv#*=}" || return 1
	done
	xenstore-ls -f "/local/domain/$id/blkdom" 2>/dev/null
	up >"$W/$n.t0"
	xl unpause "$n" || return 1
	metric "xl_create_seconds_$n" "$(since "$t0")"
}

# dd_wait NAME REGEX SECONDS: wait for the driver domain's console to say
# REGEX (its ready line).
dd_wait() {
	if ! waitfor "$(conslog "$1")" "$2" "$3" "$ddbad"; then
		dump "$1"
		return 1
	fi
	metric "unpause_to_ready_seconds_$1" "$(since "$(cat "$W/$1.t0")")"
}

# stamped NAME: the lines of a domain's console with its kernel's time
# stamps that the harness reads timings from.
stamped() {
	grep -E 'Run /init as init process|Trying to unpack rootfs|Freeing initrd memory|\] blkdom: ' "$(conslog "$1")"
}

# ddbad matches driver domain console lines that fail the test.
ddbad='Kernel panic|panic:|Attempted to kill init|level=ERROR|@@KDD fail'

# guest_detach NAME VDEV DD: xl block-detach a disk served by driver domain
# DD; libxl waits for the backend to close and for DD to remove its
# backend directory, which must then be gone. xl's debug log (shown on
# failure) says which of the waits failed.
guest_detach() {
	t0=$(up)
	gid=$(xl domid "$1") || return 1
	ddid=$(xl domid "$3") || return 1
	be=$(xenstore-read "/local/domain/$gid/device/vbd/$(vbdnum "$2")/backend") || return 1
	if ! xl -vvv block-detach "$1" "$2" >"$W/$1.detach.log" 2>&1; then
		echo "e2e: xl block-detach $1 $2 failed"
		show "$W/$1.detach.log"
		dump "$1" "$3"
		return 1
	fi
	metric "block_detach_seconds_$1_$2" "$(since "$t0")"
	if xenstore-exists "$be" 2>/dev/null; then
		echo "e2e: $be is still there after block-detach"
		dump "$1" "$3"
		return 1
	fi
	echo "$be removed by $3 (domain $ddid)"
}

# vbdnum VDEV: the xenstore device number of xvd<letter> (202<<8 | n<<4).
vbdnum() {
	l=$(printf '%d' "'${1#xvd}")
	echo $((51712 + (l - 97) * 16))
}

# dd_shutdown NAME SECONDS [BAD]: xl shutdown, wait for the domain to be
# gone, and check that its console shows an orderly stop and no line
# matching BAD (default $ddbad: no error or panic).
dd_shutdown() {
	bad=${3:-$ddbad}
	t0=$(up)
	xl shutdown "$1" || { dump "$1"; return 1; }
	i=0
	while xl domid "$1" >/dev/null 2>&1; do
		i=$((i + 1))
		if [ $i -gt $(($2 * 4)) ]; then
			echo "e2e: $1 still running $2 s after xl shutdown"
			dump "$1"
			return 1
		fi
		sleep 0.25
	done
	metric "shutdown_seconds_$1" "$(since "$t0")"
	if grep -qE "$bad" "$(conslog "$1")"; then
		echo "e2e: $1: $(grep -E "$bad" "$(conslog "$1")" | head -n 5)"
		conscut "$(conslog "$1")"
		return 1
	fi
	if ! grep -q 'msg="stopped: ' "$(conslog "$1")"; then
		echo "e2e: $1 did not log its orderly stop"
		conscut "$(conslog "$1")"
		return 1
	fi
}

# dd_verify RAW FS NAME: after the driver domain is gone, check both of its
# disks: the guest's region and ext4 on RAW (guest disk xvda), FS cleanly
# unmounted, and the same checks on guest.img inside it (guest disk xvdb).
dd_verify() {
	verify_image "$1" "$3" xvda || return 1
	state=$(/sbin/dumpe2fs -h "$2" 2>/dev/null | sed -n 's/^Filesystem state: *//p')
	echo "$2: file system state: $state"
	if [ "$state" != clean ]; then
		echo "e2e: $2 was not cleanly unmounted by the driver domain"
		return 1
	fi
	/sbin/e2fsck -f -n "$2" || return 1
	mkdir -p "$W/fsmnt"
	mount -t ext4 -o loop,ro "$2" "$W/fsmnt" || return 1
	verify_image "$W/fsmnt/guest.img" "$3" xvdb
	rc=$?
	umount "$W/fsmnt"
	return $rc
}

# probes NAME SECONDS: wait for the backend in NAME (0: "blkdom serve" in
# dom0, else a driver domain's console) to say whether its eBPF probes are
# on, and print that line (the reason, when they are off); fail unless on.
probes() {
	f=$W/serve.log
	[ "$1" = 0 ] || f=$(conslog "$1")
	if ! waitfor "$f" 'eBPF probes (on|off)' "$2"; then
		if [ "$1" = 0 ]; then show "$f"; else conscut "$f"; fi
		return 1
	fi
	grep -E 'eBPF probes (on|off)' "$f"
	grep -q 'eBPF probes on' "$f"
}

# stat_wait BACKEND NAME DISKS SECONDS: run "blkdom stat" for backend domain
# BACKEND (0, or a driver domain's name) until DISKS of guest NAME's disks
# show reads, writes and flushes (every guest's checks fsync; statistics
# are published every 5 s, so one count can show before the others), then
# print its table; fail after SECONDS.
stat_wait() {
	be=0
	[ "$1" = 0 ] || be=$(xl domid "$1") || return 1
	gid=$(xl domid "$2") || return 1
	echo "guest $2 is domain $gid, backend domain $be"
	t0=$(up)
	while :; do
		if /e2e/blkdom stat -wide -backend "$be" >"$W/stat.txt" 2>&1 &&
			[ "$(awk -v g="$gid" 'NR == 1 { for (i = 1; i <= NF; i++) c[$i] = i; next }
				$c["frontend"] == g && $c["rd_req"] > 0 && $c["wr_req"] > 0 && $c["f_req"] > 0' "$W/stat.txt" |
				wc -l)" -ge "$3" ]; then
			cat "$W/stat.txt"
			return 0
		fi
		if awk -v a="$t0" -v b="$(up)" -v l="$4" 'BEGIN { exit !(b - a >= l) }'; then
			echo "e2e: blkdom stat shows no reads, writes and flushes on $3 disks of $2 after $4 s"
			cat "$W/stat.txt"
			dump "$2"
			return 1
		fi
		sleep 1
	done
}

# loop4k IMAGE MIB: a new sparse IMAGE behind a loop device with 4096-byte
# logical sectors, announced as "@@E2E LOOP <dev>@@". util-linux losetup
# by its path: busybox's shell runs its own applets before searching PATH.
loop4k() {
	mkimg "$1" "$2" || return 1
	dev=$(/sbin/losetup --sector-size 4096 --show -f "$1") || return 1
	echo "@@E2E LOOP $dev@@"
	echo "$dev: logical block size $(cat "/sys/block/${dev#/dev/}/queue/logical_block_size")"
}

# vbd_keys NAME VDEV...: the keys directly in the backend and frontend
# directories of guest NAME's disks, as "<vdev> backend|frontend KEY=VALUE".
vbd_keys() {
	n=$1
	shift
	gid=$(xl domid "$n") || return 1
	for v in "$@"; do
		fe=/local/domain/$gid/device/vbd/$(vbdnum "$v")
		be=$(xenstore-read "$fe/backend") || return 1
		for side in backend:$be frontend:$fe; do
			dir=${side#*:}
			for k in $(xenstore-list "$dir"); do
				echo "$v ${side%%:*} $k=$(xenstore-read "$dir/$k")"
			done
		done
	done
}

# feat_discard NAME IMAGE SECONDS: count IMAGE's allocated blocks once
# guest NAME has written the range it discards, let it discard (data/
# e2e-discard = go), count again: the blocks must have gone down by at least
# three quarters of the 16 MiB range.
feat_discard() {
	n=$1 img=$2 log=$(conslog "$1")
	waitfor "$log" '@@GUEST discard-written' "$3" "$guestbad" || { dump "$n"; return 1; }
	before=$(stat -c %b "$img")
	gid=$(xl domid "$n") || return 1
	xenstore-write "/local/domain/$gid/data/e2e-discard" go || return 1
	t0=$(up)
	waitfor "$log" '@@GUEST discard-done' 120 "$guestbad" || { dump "$n"; return 1; }
	metric "discard_seconds_$n" "$(since "$t0")"
	after=$(stat -c %b "$img")
	echo "$img: $before blocks of 512 bytes allocated before the discard, $after after"
	metric "discard_freed_kib_$n" $(((before - after) / 2))
	if [ $((before - after)) -lt 24576 ]; then
		echo "e2e: the discard of 16 MiB freed $(((before - after) / 2)) KiB of $img"
		dump "$n"
		return 1
	fi
}

# feat_resize NAME IMAGE MIB SECONDS: once guest NAME is ready, grow IMAGE
# to MIB MiB; the guest must see exactly that size, and use it.
feat_resize() {
	n=$1 img=$2 log=$(conslog "$1")
	waitfor "$log" '@@GUEST resize-ready' "$4" "$guestbad" || { dump "$n"; return 1; }
	t0=$(up)
	truncate -s "${3}M" "$img" || return 1
	waitfor "$log" '@@GUEST resized' 120 "$guestbad" || { dump "$n"; return 1; }
	metric "resize_seen_seconds_$n" "$(since "$t0")"
	got=$(sed -n 's/.*@@GUEST resized [a-z]* sectors=\([0-9]*\) .*/\1/p' "$log")
	echo "$img grown to $3 MiB; guest $n sees $got sectors"
	if [ "$got" != $(($3 * 2048)) ]; then
		echo "e2e: guest $n sees $got sectors, want $(($3 * 2048))"
		dump "$n"
		return 1
	fi
}

# fill_image PATH MIB: an image of MIB MiB of zeros, every block allocated,
# so that no backend pays for allocating tmpfs pages while it is measured.
# The images of the tests before it in the same boot are done with: they go
# first, since dom0's tmpfs root (half of its 1 GiB) cannot hold them all.
fill_image() {
	rm -f "$W"/*.img /srv/nfs/*.img
	if ! dd if=/dev/zero of="$1" bs=1M count="$2" 2>&1; then
		df -m "$W" /srv/nfs 2>/dev/null
		return 1
	fi
	echo "image $1: $2 MiB, allocated"
}

# fio_ready NAME SECONDS: wait for the speed guest NAME to say it is ready
# for its fio jobs.
fio_ready() {
	if ! waitfor "$(conslog "$1")" '@@GUEST fio-ready' "$2" "$guestbad"; then
		dump "$1"
		return 1
	fi
	metric "create_to_fio_ready_seconds_$1" "$(since "$(cat "$W/$1.t0")")"
}

# cpu_us WHO: a CPU time counter of the backend, in microseconds: "proc" is
# dom0's busy time (/proc/stat: user, nice, system, irq and softirq, not
# steal: time the hypervisor gave to other domains;
# USER_HZ = 100), "ticks:NAME" the busy time driver domain NAME publishes
# (data/cpu-busy-ticks, see kdd/init), "blkdom:NAME" the CPU time of the
# blkdom process in domain NAME (0 for dom0; data/blkdom/cpu_*_us) and
# "busy:NAME" the busy time blkdom publishes for its driver domain NAME
# (data/blkdom/domain_busy_us, from /proc/stat as for the kernel's).
cpu_us() {
	case $1 in
	proc)
		awk '$1 == "cpu" { printf "%.0f\n", ($2 + $3 + $4 + $7 + $8) * 10000; exit }' /proc/stat
		;;
	ticks:*)
		id=$(xl domid "${1#ticks:}") || return 1
		t=$(xenstore-read "/local/domain/$id/data/cpu-busy-ticks") || return 1
		echo $((t * 10000))
		;;
	blkdom:*)
		id=0
		[ "${1#blkdom:}" = 0 ] || id=$(xl domid "${1#blkdom:}") || return 1
		u=$(xenstore-read "/local/domain/$id/data/blkdom/cpu_user_us") || return 1
		s=$(xenstore-read "/local/domain/$id/data/blkdom/cpu_sys_us") || return 1
		echo $((u + s))
		;;
	busy:*)
		id=$(xl domid "${1#busy:}") || return 1
		xenstore-read "/local/domain/$id/data/blkdom/domain_busy_us"
		;;
	*)
		echo "e2e: cpu_us: unknown counter $1"
		return 1
		;;
	esac
}

# fio_job NAME JOB WHO SETTLE SECONDS: cue speed guest NAME's fio job JOB
# and wait (SECONDS at most) for it to end; read the backend's CPU counter
# WHO (see cpu_us) before the cue and SETTLE seconds after the end (the
# time its publisher needs to catch up). Prints the CPU used and the
# guest's fio lines for the harness.
fio_job() {
	n=$1 j=$2 who=$3 log=$(conslog "$1")
	gid=$(xl domid "$n") || return 1
	# For blkdom also its whole domain's busy time, as the kernel
	# backend's is measured.
	dom=
	case $who in
	blkdom:0) dom=proc ;;
	blkdom:*) dom=busy:${who#blkdom:} ;;
	esac
	c0=$(cpu_us "$who") || { echo "e2e: no CPU time from $who"; return 1; }
	[ -z "$dom" ] || d0=$(cpu_us "$dom") || { echo "e2e: no CPU time from $dom"; return 1; }
	t0=$(up)
	xenstore-write "/local/domain/$gid/data/e2e-fio-$j" go || return 1
	# Looking once a second keeps the poll out of dom0's CPU time.
	if ! WAITFOR_POLL=1 waitfor "$log" "@@GUEST fio-done $j " "$5" "$guestbad"; then
		dump "$n"
		return 1
	fi
	secs=$(since "$t0")
	sleep "$4"
	c1=$(cpu_us "$who") || { echo "e2e: no CPU time from $who"; return 1; }
	echo "@@E2E FIOCPU $j us=$((c1 - c0)) seconds=$secs@@"
	if [ -n "$dom" ]; then
		d1=$(cpu_us "$dom") || { echo "e2e: no CPU time from $dom"; return 1; }
		echo "@@E2E FIODOMAINCPU $j us=$((d1 - d0))@@"
	fi
	case $who in
	blkdom:*)
		# blkdom's event-handling counters, its latency histogram and its
		# user and system CPU time (cumulative over the jobs),
		# for the log: what a job cost is read from their differences.
		bid=0
		[ "${who#blkdom:}" = 0 ] || bid=$(xl domid "${who#blkdom:}")
		st=/local/domain/$bid/backend/vbd/$gid/51712/statistics
		echo "@@E2E FIOSTATS $j $(for k in rd_req wr_req f_req notifies poll_hits poll_us spurious_events grant_maps data_iovecs latency_us_log2; do
			printf '%s=%s ' "$k" "$(xenstore-read "$st/$k" 2>/dev/null | tr ' ' ,)"
		done)$(for k in cpu_user_us cpu_sys_us; do
			printf '%s=%s ' "$k" "$(xenstore-read "/local/domain/$bid/data/blkdom/$k" 2>/dev/null)"
		done)@@"
		# A driver domain's blkdom says on its console if direct I/O into
		# the guest's pages fell back to the page cache.
		[ "$bid" = 0 ] || grep -h 'direct I/O' "$(conslog "${who#blkdom:}")" | head -3
		# In dom0, where blkdom's threads can be seen: the four busiest
		# (name, user/system ticks and voluntary/involuntary context
		# switches, cumulative), to tell a thread that spins from one that
		# works, and Go's threads from io_uring's workers (iou-wrk-*).
		if [ "$bid" = 0 ] && pid=$(pidof blkdom); then
			echo "@@E2E FIOSTATS $j threads $(for t in /proc/$pid/task/*; do
				awk '{ printf "%d %d/%d", $14 + $15, $14, $15 }' "$t/stat"
				awk '/^voluntary_ctxt/ { v = $2 } /^nonvoluntary_ctxt/ { printf " %d/%d", v, $2 }' "$t/status"
				printf ' %s\n' "$(cat "$t/comm")"
			done | sort -rn | head -4 | cut -d' ' -f2- | tr '\n' ' ')@@"
		fi
		;;
	esac
	grep -E "@@GUEST fio(-done)? $j " "$log"
}

# nfs_server: dom0 as the NFS server of the network storage scenarios: a
# bridge xenbr0 with 169.254.1.1/16 for the domains' vifs (link-local: the
# network exists only inside the emulated machine), and /srv/nfs (a tmpfs)
# exported over NFSv3 and v4 to 169.254.0.0/16. A second call finds it
# running.
nfs_server() {
	t0=$(up)
	for m in sunrpc grace lockd nfs_acl auth_rpcgss nfsd llc stp bridge xen-netback; do
		modprobe "$m" || { echo "e2e: modprobe $m failed"; return 1; }
	done
	ip link set lo up
	if [ ! -d /sys/class/net/xenbr0 ]; then
		brctl addbr xenbr0 || return 1
		echo 0 >/sys/class/net/xenbr0/bridge/forward_delay
		ip addr add 169.254.1.1/16 dev xenbr0 || return 1
		ip link set xenbr0 up || return 1
	fi
	if pidof rpc.mountd >/dev/null; then
		echo "NFS server running"
		return 0
	fi
	grep -q ' /proc/fs/nfsd ' /proc/mounts || mount -t nfsd nfsd /proc/fs/nfsd || return 1
	mkdir -p /srv/nfs
	grep -q ' /srv/nfs ' /proc/mounts || mount -t tmpfs -o size=512m,mode=0755 nfs /srv/nfs || return 1
	# A short grace period: a client's reclaim after a server restart
	# waits this long.
	echo 10 >/proc/fs/nfsd/nfsv4gracetime
	echo 10 >/proc/fs/nfsd/nfsv4leasetime
	echo '/srv/nfs 169.254.0.0/16(rw,sync,no_root_squash,no_subtree_check,insecure,fsid=1)' >/etc/exports
	mkdir -p /run/rpcbind /var/lib/nfs
	chown _rpc /run/rpcbind
	touch /var/lib/nfs/etab /var/lib/nfs/rmtab
	rpcbind -w || { echo "e2e: rpcbind failed"; return 1; }
	exportfs -ra || { echo "e2e: exportfs failed"; return 1; }
	rpc.mountd || { echo "e2e: rpc.mountd failed"; return 1; }
	rpc.nfsd 4 || { echo "e2e: rpc.nfsd failed"; return 1; }
	rpcinfo -p 127.0.0.1
	showmount -e 127.0.0.1 || return 1
	metric nfs_server_start_seconds "$(since "$t0")"
}

# dd_create_net NAME RAMDISK MAC RAW [KEY=VALUE...]: create a storage
# driver domain with one vif on xenbr0 (MAC) and, unless RAW is "-", the
# raw image RAW as its disk xvdb (served by dom0's kernel blkback), paused;
# write each KEY=VALUE under its blkdom/ directory (its network and NFS
# mounts), and unpause it.
dd_create_net() {
	n=$1 ram=$2 mac=$3 raw=$4
	shift 4
	more="driver_domain=1
vif=['bridge=xenbr0,script=vif-bridge,mac=$mac']"
	if [ "$raw" = - ]; then
		writecfg "$n" "loglevel=8" "$ram" "$more"
	else
		writecfg "$n" "loglevel=8" "$ram" "$more" "format=raw,vdev=xvdb,access=rw,target=$raw"
	fi
	rm -f "$(conslog "$n")"
	t0=$(up)
	if ! xl -v create -p "$W/$n.cfg" >"$W/$n.xl.log" 2>&1; then
		echo "e2e: xl create -p $n failed"
		show /var/log/xen/vif-hotplug.log
		dump "$n"
		return 1
	fi
	id=$(xl domid "$n")
	for kv in "$@"; do
		xenstore-write "/local/domain/$id/blkdom/${kv%%=*}" "${kv#*=}" || return 1
	done
	xenstore-ls -f "/local/domain/$id/blkdom"
	up >"$W/$n.t0"
	xl unpause "$n" || return 1
	metric "xl_create_seconds_$n" "$(since "$t0")"
	show /var/log/xen/vif-hotplug.log
}

# dd_status NAME REL STATE SECONDS: wait until driver domain NAME publishes
# STATE for REL (net/eth0, mounts/0) under data/blkdom, then print all it
# published there.
dd_status() {
	id=$(xl domid "$1") || return 1
	k=/local/domain/$id/data/blkdom/$2
	t0=$(up)
	while [ "$(xenstore-read "$k/state" 2>/dev/null)" != "$3" ]; do
		if awk -v a="$t0" -v b="$(up)" -v l="$4" 'BEGIN { exit !(b - a >= l) }'; then
			echo "e2e: $k/state is '$(xenstore-read "$k/state" 2>&1)', not $3, after $4 s"
			xenstore-ls -f "/local/domain/$id/data" 2>&1
			dump "$1"
			return 1
		fi
		sleep 0.25
	done
	metric "dd_status_seconds_$1_$(echo "$2" | tr / _)_$3" "$(since "$t0")"
	xenstore-ls -f "/local/domain/$id/data/blkdom"
}

# guest_ready NAME MARKER SECONDS: wait for guest NAME's console to say
# @@GUEST MARKER (it then waits for a cue from guest_go).
guest_ready() {
	waitfor "$(conslog "$1")" "@@GUEST $2" "$3" "$guestbad" || { dump "$1"; return 1; }
}

# guest_go NAME KEY: the cue guest NAME waits for: its data/KEY = go.
guest_go() {
	gid=$(xl domid "$1") || return 1
	xenstore-write "/local/domain/$gid/data/$2" go
}

# netem NAME ARGS...: tc netem with ARGS (e.g. "loss 10% delay 5ms") on
# dom0's side of domain NAME's vif: every packet dom0 sends it (the NFS
# server's replies and acknowledgements) may be lost or late, so its TCP
# retransmits what it sent. Gone with the vif.
netem() {
	n=$1
	shift
	id=$(xl domid "$n") || return 1
	modprobe sch_netem || { echo "e2e: modprobe sch_netem failed"; return 1; }
	# The full path: busybox's shell runs its own tc applet for "tc".
	/sbin/tc qdisc replace dev "vif$id.0" root netem "$@" || return 1
	/sbin/tc -s qdisc show dev "vif$id.0"
}

# netem_show NAME: the netem qdisc's counters on domain NAME's vif.
netem_show() {
	id=$(xl domid "$1") || return 1
	/sbin/tc -s qdisc show dev "vif$id.0"
}

# nfs_stop: stop dom0's NFS server (nfsd's threads, and so its sockets):
# clients' mounts and I/O wait for it to come back.
nfs_stop() {
	rpc.nfsd 0 || return 1
	echo "nfsd stopped: $(cat /proc/fs/nfsd/threads) threads"
}

# nfs_start: start dom0's NFS server again after nfs_stop.
nfs_start() {
	rpc.nfsd 4 || return 1
	echo "nfsd started: $(cat /proc/fs/nfsd/threads) threads"
}

# nfs_outage NAME DOWN DD: once guest NAME writes (e2e.outage=1, see
# guest/init), let it write 10 s, stop dom0's NFS server for DOWN seconds,
# start it again and cue the guest's end (data/e2e-outage-stop); wait for
# its verdict and print it, with what driver domain DD's kernel said about
# NFS and its blkdom's warnings and errors.
nfs_outage() {
	guest_ready "$1" outage-writing 120 || return 1
	sleep 10
	t0=$(up)
	nfs_stop || return 1
	sleep "$2"
	nfs_start || return 1
	metric nfs_outage_server_down_seconds "$(since "$t0")"
	guest_go "$1" e2e-outage-stop || return 1
	waitfor "$(conslog "$1")" '@@GUEST done rc=0@@' 300 "$guestbad" || { dump "$1"; return 1; }
	grep -E '@@GUEST outage |guest-dmesg' "$(conslog "$1")"
	grep -E 'nfs: |blkdom: level=(WARN|ERROR)' "$(conslog "$3")"
	true
}

# vbd_state NAME VDEV STATE SECONDS: wait until the backend of guest
# NAME's disk VDEV is in xenbus state STATE (2 InitWait, 4 Connected),
# SECONDS at most (0: look once); print both sides' states.
vbd_state() {
	gid=$(xl domid "$1") || return 1
	fe=/local/domain/$gid/device/vbd/$(vbdnum "$2")
	be=$(xenstore-read "$fe/backend") || return 1
	t0=$(up)
	while :; do
		bs=$(xenstore-read "$be/state") fs=$(xenstore-read "$fe/state")
		[ "$bs" = "$3" ] && break
		if awk -v a="$t0" -v b="$(up)" -v l="$4" 'BEGIN { exit !(b - a >= l) }'; then
			echo "e2e: $1 $2: backend state $bs, not $3, after $4 s"
			dump "$1"
			return 1
		fi
		sleep 0.25
	done
	echo "$1 $2: backend $be state $bs, frontend state $fs"
}

# The storage fault scenario (TestDriverDomainFaults). Its fault disk is
# a device-mapper device in dom0, blkfault, over a loop device on a file;
# dom0's kernel blkback hands it to the driver domain, whose blkdom serves
# it to the guest, so blkdom sees the errors, the failed flushes and the
# delays of a real block device whose table the steps switch.
export DM_DISABLE_UDEV=1 # dmsetup makes the /dev/mapper nodes itself
faultsize=16             # MiB

# fault_images FAULT FS: FAULT, a 16 MiB sparse file under blkfault
# (linear), and FS, a 12 MiB ext4 holding full.img (64 MiB, sparse: more
# than the file system can hold) and good.img (4 MiB of data).
fault_images() {
	for m in dm-mod dm-flakey dm-delay; do
		modprobe "$m" || return 1
	done
	fault_teardown
	mkimg "$1" $faultsize || return 1
	/sbin/losetup -f --show "$1" >"$W/fault.loop" || return 1
	fault_table linear || return 1
	rm -rf "$W/fsroot" "$2"
	mkdir -p "$W/fsroot"
	truncate -s 64M "$W/fsroot/full.img"
	yes blkdom | head -c 4194304 >"$W/fsroot/good.img"
	/sbin/mke2fs -q -t ext4 -d "$W/fsroot" "$2" 12M || return 1
	rm -rf "$W/fsroot"
	echo "image $2: ext4 with full.img and good.img;" \
		"$(/sbin/dumpe2fs -h "$2" 2>/dev/null | grep -E '^(Free blocks|Block size):' | tr -s ' \n' ' ')"
}

# fault_table KIND: give blkfault the table KIND: linear (the loop device
# as it is), error (every I/O fails), flakey (1 s up, 1 s down: every I/O
# in a down second fails), delay (300 ms on every I/O), or removed (dmsetup
# remove --force: the table becomes error, and the device goes once its
# last user closes it).
fault_table() {
	loop=$(cat "$W/fault.loop") sz=$((faultsize * 2048))
	case $1 in
	linear) t="0 $sz linear $loop 0" ;;
	error) t="0 $sz error" ;;
	flakey) t="0 $sz flakey $loop 0 1 1" ;;
	delay) t="0 $sz delay $loop 0 300" ;;
	removed)
		dmsetup remove --force --deferred blkfault
		echo "dmsetup remove --force --deferred: rc=$?"
		dmsetup info blkfault
		dmsetup table blkfault | grep -q ' error' || { echo "e2e: blkfault's table is not error"; return 1; }
		return 0
		;;
	*) echo "e2e: no table $1"; return 1 ;;
	esac
	if dmsetup info blkfault >/dev/null 2>&1; then
		dmsetup suspend blkfault && dmsetup load blkfault --table "$t" && dmsetup resume blkfault
	else
		dmsetup create blkfault --table "$t"
	fi || return 1
	dmsetup table blkfault
}

# fault_phase NAME N TABLE SPEC: give blkfault the table TABLE ("-": leave
# it), cue the guest's phase N with SPEC ("<disk> <first> <count> <other>",
# see guest/init) and wait for it to end; print the phase's lines.
fault_phase() {
	n=$2
	[ "$3" = - ] || fault_table "$3" || return 1
	gid=$(xl domid "$1") || return 1
	t0=$(up)
	xenstore-write "/local/domain/$gid/data/e2e-fault-$n" "$4" || return 1
	if ! waitfor "$(conslog "$1")" "@@GUEST fault-phase $n done@@" 240 '@@GUEST fail|Kernel panic'; then
		dump "$1"
		return 1
	fi
	metric "fault_phase_seconds_$n" "$(since "$t0")"
	grep -E "@@GUEST f[wfro] $n " "$(conslog "$1")"
}

# fault_end NAME N: tell the guest the phases are over (N is the one after
# the last); wait for its done.
fault_end() {
	gid=$(xl domid "$1") || return 1
	xenstore-write "/local/domain/$gid/data/e2e-fault-$2" end || return 1
	if ! waitfor "$(conslog "$1")" '@@GUEST done rc=0@@' 60 '@@GUEST fail|Kernel panic'; then
		dump "$1"
		return 1
	fi
	grep -E 'guest-dmesg' "$(conslog "$1")" | tail -n 30
}

# fault_verify IMAGE TAG CHUNK...: compare each chunk of IMAGE byte by byte
# with what faultpat.awk makes of it.
fault_verify() {
	img=$1 tag=$2
	shift 2
	for c in "$@"; do
		awk -v tag="$tag" -v chunk="$c" -f /e2e/faultpat.awk >"$W/fault.want"
		dd if="$img" of="$W/fault.got" bs=131072 skip="$c" count=1 2>/dev/null
		if cmp -s "$W/fault.want" "$W/fault.got"; then
			echo "fault-chunk $tag $c same"
		else
			echo "fault-chunk $tag $c differs"
		fi
	done
}

# fault_verify_fs FS FILE TAG CHUNK...: fault_verify on FILE in the ext4
# FS (mounted read-only), after checking FS.
fault_verify_fs() {
	fs=$1 f=$2
	shift 2
	/sbin/e2fsck -f -n "$fs" || return 1
	mkdir -p "$W/fsmnt"
	mount -t ext4 -o loop,ro "$fs" "$W/fsmnt" || return 1
	fault_verify "$W/fsmnt/$f" "$@"
	umount "$W/fsmnt"
}

# fault_teardown: remove blkfault and its loop device, if they are there.
fault_teardown() {
	dmsetup info blkfault >/dev/null 2>&1 && dmsetup remove --force blkfault
	[ -s "$W/fault.loop" ] && /sbin/losetup -d "$(cat "$W/fault.loop")"
	rm -f "$W/fault.loop"
	true
}

# move_guest NAME FROM TO: move guest NAME, whose disks driver domain FROM
# serves, to a copy of its config that names driver domain TO as their
# backend: xl save, then xl restore with that config (Debian's Xen 4.17
# cannot live-migrate a PV guest; a restore runs the same frontend and
# backend sequence as a migration's end). It prints the order dom0 saw:
#   move-order FROM TO old=<domid> new=<domid> closed-first=1|0
#       disconnected-at=<FROM's console clock> connected-at=<TO's>
# closed-first=1 when FROM's blkdom had logged "disconnected" (after its
# flush and close) for every disk of the old domain before xl restore
# started, so before TO's blkdom could open the image; TO's "connected"
# (after its open) for the new domain is waited for after the restore.
move_guest() {
	n=$1 from=$2 to=$3
	flog=$(conslog "$from") tlog=$(conslog "$to")
	old=$(xl domid "$n") || return 1
	ndisks=$(xenstore-list "/local/domain/$old/device/vbd" | wc -l)
	sed "s/backend=$from,/backend=$to,/g" "$W/$n.cfg" >"$W/$n.$to.cfg"
	grep -q "backend=$to," "$W/$n.$to.cfg" || { echo "e2e: no backend=$from, in $W/$n.cfg"; return 1; }
	t0=$(up)
	if ! xl -v save "$n" "$W/$n.save" >"$W/$n.save.log" 2>&1; then
		echo "e2e: xl save $n failed"
		show "$W/$n.save.log"
		dump "$n" "$from"
		return 1
	fi
	metric "nfs_move_save_seconds_$to" "$(since "$t0")"
	ls -l "$W/$n.save"
	# The console lines reach the log file through xenconsoled: give them
	# a moment, but start the restore only once they are all there.
	closed=0 t1=$(up)
	while :; do
		closed=$(grep -c "msg=disconnected vbd=$old/" "$flog")
		[ "$closed" -lt "$ndisks" ] || break
		awk -v a="$t1" -v b="$(up)" 'BEGIN { exit !(b - a >= 10) }' && break
		sleep 0.1
	done
	first=0
	[ "$closed" -lt "$ndisks" ] || first=1
	trs=$(up)
	if ! xl -v restore "$W/$n.$to.cfg" "$W/$n.save" >"$W/$n.restore.log" 2>&1; then
		echo "e2e: xl restore $n failed"
		show "$W/$n.restore.log"
		dump "$n" "$to"
		return 1
	fi
	metric "nfs_move_restore_seconds_$to" "$(since "$trs")"
	rm -f "$W/$n.save"
	new=$(xl domid "$n") || return 1
	if ! waitfor "$tlog" "msg=connected vbd=$new/" 60 "$guestbad"; then
		dump "$n" "$to"
		return 1
	fi
	# From the restore's start to the target's "connected" in dom0's log.
	metric "nfs_move_restore_to_connected_seconds_$to" "$(since "$trs")"
	grep -h -e "msg=disconnected vbd=$old/" "$flog"
	grep -h -e "msg=connected vbd=$new/" "$tlog"
	dis=$(sed -n "s/^\[\([^]]*\)\].*msg=disconnected vbd=$old\/.*/\1/p" "$flog" | tail -n 1 | tr ' ' T)
	con=$(sed -n "s/^\[\([^]]*\)\].*msg=connected vbd=$new\/.*/\1/p" "$tlog" | head -n 1 | tr ' ' T)
	echo "move-order $from $to old=$old new=$new closed-first=$first disconnected-at=$dis connected-at=$con"
}

# move_writes NAME WRITES SECONDS: wait until guest NAME in the move
# scenario has made WRITES writes (its last "mv writes=" marker).
move_writes() {
	t0=$(up)
	while :; do
		w=$(sed -n 's/.*@@GUEST mv writes=\([0-9]*\) .*/\1/p' "$(conslog "$1")" | tail -n 1)
		[ "${w:-0}" -lt "$2" ] || break
		if grep -qE "$guestbad" "$(conslog "$1")" ||
			awk -v a="$t0" -v b="$(up)" -v l="$3" 'BEGIN { exit !(b - a >= l) }'; then
			echo "e2e: guest $1 at ${w:-0} writes, not $2, after $(since "$t0") s"
			dump "$1"
			return 1
		fi
		sleep 0.5
	done
	echo "guest $1: $w writes"
}
