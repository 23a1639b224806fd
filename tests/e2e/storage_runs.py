"""The Enlighten runs behind test_storage.py: ONE test-host session ("storage"), one
scenario (a shell script in the test host) per run, executed one after another when the
first storage test asks for its run. Every run starts its own Enlighten processes with
`--disk` options on raw images that live in a tmpfs of the test host (RAM; it supports
hole punching, which the UNMAP run needs), and prints:

- "RESULT key=value" lines: the test host's own measurements are "host.*";
- each boot's guest console and Enlighten log between "--- NAME: guest console ---",
  "--- NAME: enlighten log ---" and "--- NAME: end ---" (the guest's /job prints its own
  RESULT lines and tagged lines there);
- the API's VM info between "INFO-BEGIN TAG" and "INFO-END TAG".

Runs (guest boots):
  channels  4 vCPUs, fio on one disk: sub-channels and per-channel counters (1 boot)
  disks     3 SCSI LUNs, 1 IDE disk, 1 read-only SCSI disk: lsblk, sizes, data, WP (1 boot)
  fs        ext4 made and written, then read back in a second boot (2 boots)
  durable   write + fsync, SIGKILL of the VMM as soon as the guest says fsync returned (1)
  full      the images' file system fills up: the guest's writes fail with a SCSI error (1)
  hotplug   add-disk / remove-disk through the API while the guest watches (1)
  trim      fstrim: the image's allocated blocks shrink (1)
  hostile   bogus CDBs and LUNs from the guest's user space (sg_raw, scan) (1)
"""

from __future__ import annotations

from harness import Session, program

STORAGE = Session("storage")
# The 4-vCPU guest gets a test host of its own with 4 vCPUs (on this machine's cores), see
# "channels" below.
MULTICHANNEL = Session("multichannel", host_cpus=4, retry_guest_triple_fault=True)

SCSI_CLASS = "ba6163d9-04a1-4d29-b605-72e2ffb1dc7f"
IDE_CLASS = "32412632-86cb-44a2-9b5c-50d1417354f5"

# Scenario helpers (busybox sh in the test host), after harness.SCENARIO_LIB ($ENL, $KERNEL,
# $INITRD, $CPUS, $WORK, $API, api).
STORAGE_LIB = r"""
GUEST_MODULES="enlighten.modules=hv_vmbus,hv_storvsc,sd_mod"
DISKS=$WORK/disks
mkdir -p "$DISKS"
# A tmpfs of its own for the disk images (RAM, hole punching), gone when the run ends.
mount -t tmpfs -o size=600m tmpfs "$DISKS" 2>/dev/null
trap 'umount -l "$DISKS" 2>/dev/null' EXIT
echo "RESULT host.disks_fs=$(stat -f -c %T "$DISKS")"
# pattern LINES TAG: LINES x 64 bytes, each line "TAG <58-digit line number>" (TAG: 4 chars),
# so a sector found at the wrong place is told apart. The guest has the same function.
pattern() { awk -v n="$1" -v tag="$2" 'BEGIN { for (i = 0; i < n; i++) printf "%s %058d\n", tag, i }'; }
show() {
    echo "--- $1: guest console ---"; tr -d '\r' < "$WORK/$1.serial" 2>/dev/null
    [ -n "$(tail -c 1 "$WORK/$1.serial" 2>/dev/null)" ] && echo   # a VM killed mid-line
    echo "--- $1: enlighten log ---"; cat "$WORK/$1.vmm.log" 2>/dev/null
    echo "--- $1: end ---"
}
# vm NAME "kernel args" ENLIGHTEN-ARGS...: boot in the foreground until the guest powers off
# after its /job; prints "RESULT NAME.rc=<exit status>" and the console.
vm() {
    name=$1; extra=$2; shift 2
    timeout -s KILL 240 "$ENL" run --kernel "$KERNEL" --initrd "$INITRD" --memory 512M --cpus "$CPUS" \
        --serial "file:$WORK/$name.serial" --on-reboot exit --log-level info \
        --cmdline "console=ttyS0 quiet panic=-1 $GUEST_MODULES $extra" "$@" >"$WORK/$name.vmm.log" 2>&1
    echo "RESULT $name.rc=$?"
    show "$name"
}
# start_bg NAME "kernel args" ENLIGHTEN-ARGS...: the same in the background, with the API on
# $API; the guest stays up after its /job (enlighten.stay). Then wait_guest, info, stop_vm.
start_bg() {
    BG_NAME=$1; extra=$2; shift 2
    SERIAL=$WORK/$BG_NAME.serial
    "$ENL" run --kernel "$KERNEL" --initrd "$INITRD" --memory 512M --cpus "$CPUS" \
        --serial "file:$SERIAL" --api-socket "$API" --on-reboot exit --log-level info \
        --cmdline "console=ttyS0 quiet panic=-1 enlighten.stay $GUEST_MODULES $extra" "$@" >"$WORK/$BG_NAME.vmm.log" 2>&1 &
    VM_PID=$!
}
vm_alive() { st=; read -r _ _ st _ < "/proc/$VM_PID/stat" 2>/dev/null; [ -n "$st" ] && [ "$st" != Z ]; }
# wait_guest PATTERN SECONDS: until the guest console shows PATTERN; gives up at once when
# the VMM has exited (e.g. it refused its command line).
wait_guest() {
    n=0
    while ! grep -q "$1" "$SERIAL" 2>/dev/null; do
        if ! vm_alive; then grep -q "$1" "$SERIAL" 2>/dev/null && return 0; echo "SCENARIO-VM-EXITED waiting for '$1'"; return 1; fi
        n=$((n + 1))
        if [ $n -gt $(($2 * 20)) ]; then echo "SCENARIO-TIMEOUT waiting for '$1'"; return 1; fi
        sleep 0.05
    done
}
# info TAG: the API's VM info between markers (parsed by the test)
info() { echo "INFO-BEGIN $1"; api info; echo "INFO-END $1"; }
# stop_vm: power the background VM off through the API (exit status 5, docs/api.md), print
# its exit status and console
stop_vm() {
    vm_alive && api power-off >/dev/null
    wait "$VM_PID"
    echo "RESULT $BG_NAME.rc=$?"
    show "$BG_NAME"
}
# host_cmp ID FILE SKIP_64K COUNT_64K EXPECTED: are those bytes of the image what the guest wrote?
host_cmp() {
    if dd if="$2" bs=65536 skip="$3" count="$4" 2>/dev/null | cmp -s - "$5"; then
        echo "RESULT host.$1=same"
    else
        echo "RESULT host.$1=differs"
    fi
}
allocated() { echo $(( $(stat -c %b "$1") * $(stat -c %B "$1") )); }
"""

# Shell functions for the guest's /job (Debian's busybox sh, e2fsprogs, util-linux, dd, fio).
GUEST_LIB = r"""
arg() { for a in $(cat /proc/cmdline); do case "$a" in "$1"=*) echo "${a#*=}"; return;; esac; done; }
# wait_until SECONDS COMMAND...: repeat COMMAND until it succeeds
wait_until() { s=$1; shift; n=0; while ! "$@"; do n=$((n + 1)); [ $n -ge $((s * 10)) ] && return 1; sleep 0.1; done; }
# disks whose sd probe finished (a size, and the /dev node from devtmpfs)
ndisks() {
    n=0
    for b in /sys/block/sd*; do
        [ -e "$b" ] && [ "$(cat "$b/size")" != 0 ] && [ -b "/dev/${b##*/}" ] && n=$((n + 1))
    done
    echo $n
}
have_disks() { [ "$(ndisks)" -ge "$1" ]; }
gone() { [ ! -e "/sys/block/$1" ]; }
pattern() { awk -v n="$1" -v tag="$2" 'BEGIN { for (i = 0; i < n; i++) printf "%s %058d\n", tag, i }'; }
need_disks() {
    if ! wait_until "${2:-120}" have_disks "$1"; then
        echo "RESULT disks_found=$(ndisks)"; echo "GUEST: expected $1 disk(s)"
        lsblk; dmesg | tail -n 60; exit 1
    fi
    echo "RESULT disks_found=$(ndisks)"
}
# by_size MIB: the sd disk of that size
by_size() {
    for b in /sys/block/sd*; do
        [ "$(cat "$b/size")" = $(($1 * 2048)) ] && echo "${b##*/}" && return
    done
}
# storvsc/sd failure signatures in the kernel log (contract-storage.md section 15)
storvsc_errors() {
    dmesg | grep -E 'hv_storvsc.*(tag#|Invalid pkt|Incorrect transaction|probe of .* failed|Obsolete)|INQUIRY result too short|Device offlined|I/O error|blocked for more than' \
        | sed 's/^/STORVSC-ERROR /'
}
lsblk_all() { lsblk -b -d -n -P -o NAME,SIZE,HCTL,TYPE,RO,VENDOR,MODEL | sed "s/^/$1 /"; }
"""



def scenario(key: str, script: str, session: Session = STORAGE, **kw) -> None:
    """A run of the session: `script` after STORAGE_LIB; the guest has the disk tools."""
    session.scenario(key, STORAGE_LIB + script, tools=True, **kw)


# ----------------------------------------------------------------------------- channels
# storvsc asks for min(vCPUs - 1, max_channel_cnt) sub-channels: with 4 vCPUs, three, so
# four channels. One fio job pinned to each vCPU. This run has a test host of its own with 4
# vCPUs (MULTICHANNEL): in the usual 2-vCPU QEMU-TCG test host, a 4-vCPU guest under fio load
# crashed the test host's own kernel ("corrupted stack end detected inside scheduler" in a
# vCPU thread, or silent resets) or triple-faulted the guest, in about 1 run in 5, once
# before VMBus was even connected (2026-12-06); with 4 test-host vCPUs, 8 runs of 8 passed.
JOB_CHANNELS = GUEST_LIB + r"""
need_disks 1
echo "RESULT cpus=$(grep -c ^processor /proc/cpuinfo)"
for d in /sys/bus/vmbus/devices/*; do
    [ "$(cat "$d/class_id")" = "{ba6163d9-04a1-4d29-b605-72e2ffb1dc7f}" ] && dev=$d
done
echo "RESULT device=${dev##*/}"
echo "RESULT channels=$(ls "$dev/channels" | wc -l)"
ls "$dev/channels" | tr '\n' ' ' | sed 's/^/CHANNEL-DIRS /'; echo
tr '\n' ' ' < "$dev/channel_vp_mapping" | sed 's/^/VPMAP /'; echo
echo "RESULT nr_hw_queues=$(cat /sys/class/scsi_host/host*/nr_hw_queues | head -n 1)"
ncpu=$(grep -c ^processor /proc/cpuinfo)
fio --name=mc --filename=/dev/sda --direct=1 --ioengine=libaio --rw=randrw --bs=4k --iodepth=8 \
    --numjobs="$ncpu" --cpus_allowed="0-$((ncpu - 1))" --cpus_allowed_policy=split \
    --size=32m --offset_increment=32m --runtime=8 --time_based --group_reporting \
    --output-format=terse --terse-version=3 > /tmp/fio.out 2>&1
echo "RESULT fio_rc=$?"
sed 's/^/FIO /' /tmp/fio.out
storvsc_errors
echo "MC-IO-DONE"
"""
scenario("channels", r"""
truncate -s 128M "$DISKS/mc.img"
start_bg mc "" --disk "path=$DISKS/mc.img,id=mc"
wait_guest MC-IO-DONE 300 && info mc
stop_vm
""", job=JOB_CHANNELS, cpus=4, timeout=420, session=MULTICHANNEL)

# ----------------------------------------------------------------------------- disks
# Sizes in MiB, all different: the guest and the test know a disk by its size.
DISK_SIZES = {"s0": 48, "s1": 80, "s2": 112, "ide0": 72, "ro": 32, "wt": 56}
# The guest's view of every disk, a pattern written to and read back from each writable
# one, then the read-only disk's refusals.
JOB_DISKS = GUEST_LIB + r"""
need_disks "$(arg t.disks)"
lsblk_all LSBLK
for d in /sys/bus/vmbus/devices/*; do
    echo "VMBUS ${d##*/} class=$(cat "$d/class_id") driver=$(basename "$(readlink "$d/driver")")"
done
for b in /sys/block/sd*; do
    n=${b##*/}
    echo "SYSPATH $n $(readlink -f "$b")"
    echo "SIZE64 $n $(blockdev --getsize64 "/dev/$n")"
    echo "CACHE $(( $(cat "$b/size") / 2048 )) $(cat "$b"/device/scsi_disk/*/cache_type)"
done
dmesg | grep -E 'sd [0-9:]+: \[sd[a-z]+\]|scsi [0-9:]+: ' | sed 's/^/DMESG /'
# a pattern unique to each writable disk (its size in MiB is the tag), at 1 MiB, O_DIRECT,
# read back from the disk
for b in /sys/block/sd*; do
    n=${b##*/}; mib=$(( $(cat "$b/size") / 2048 )); tag=$(printf %04d "$mib")
    [ "$(cat "$b/ro")" = 0 ] || continue
    pattern 1024 "$tag" > "/tmp/p.$n"
    dd if="/tmp/p.$n" of="/dev/$n" bs=65536 seek=16 oflag=direct conv=fsync status=none && echo "RESULT write.$mib=ok"
    dd if="/dev/$n" bs=65536 skip=16 count=1 iflag=direct status=none | cmp -s - "/tmp/p.$n" && echo "RESULT readback.$mib=same"
done
storvsc_errors

# -- the read-only disk (32 MiB; the host wrote pattern "RO00" at 1 MiB)
ro=$(by_size 32)
echo "RESULT ro_dev=$ro"
echo "RESULT ro_sys=$(cat /sys/block/$ro/ro)"
echo "RESULT ro_getro=$(blockdev --getro /dev/$ro)"
dmesg | grep -q "\[$ro\] Write Protect is on" && echo "RESULT ro_wp_probe=yes"
pattern 1024 RO00 > /tmp/ro
dd if=/dev/$ro bs=65536 skip=16 count=1 iflag=direct status=none | cmp -s - /tmp/ro && echo "RESULT ro_read=same"
# a write through the block device: the kernel refuses it (blkdev_write_iter: EPERM)
dd if=/dev/zero of=/dev/$ro bs=4096 count=1 oflag=direct conv=fsync 2>/tmp/dd.err
echo "RESULT ro_dd_rc=$?"
sed 's/^/RO-DD-ERROR /' /tmp/dd.err
# a WRITE(10) of LBA 0 that reaches the disk (SG_IO, root): the disk must refuse it
sg_raw --readonly --infile=/dev/zero --send=512 /dev/$ro 2a 00 00 00 00 00 00 00 01 00 > /tmp/sg.out 2>&1
echo "RESULT ro_sg_raw_rc=$?"
sed 's/^/RO-SG-RAW /' /tmp/sg.out
dmesg | grep -E "$ro|hv_storvsc" | sed 's/^/RO-DMESG /'
"""
scenario("disks", r"""
for d in s0:48 s1:80 s2:112 ide0:72 ro:32 wt:56; do truncate -s "${d##*:}M" "$DISKS/${d%%:*}.img"; done
pattern 1024 RO00 > "$WORK/ro"
dd if="$WORK/ro" of="$DISKS/ro.img" bs=65536 seek=16 conv=notrunc 2>/dev/null
echo "RESULT host.ro_md5_before=$(md5sum < "$DISKS/ro.img" | cut -d' ' -f1)"
start_bg disks "t.disks=6" --disk "path=$DISKS/s0.img,id=s0" --disk "path=$DISKS/s1.img,format=raw,bus=scsi,id=s1" \
    --disk "path=$DISKS/s2.img,id=s2,serial=ENL-S2" --disk "path=$DISKS/ide0.img,bus=ide,id=ide0" \
    --disk "path=$DISKS/ro.img,id=ro,readonly=on" --disk "path=$DISKS/wt.img,id=wt,controller=1,cache=writethrough"
wait_guest ENLIGHTEN-JOB-EXIT 240
info disks
stop_vm
for d in s0:48 s1:80 s2:112 ide0:72 wt:56; do
    id=${d%%:*}; mib=${d##*:}
    pattern 1024 "$(printf %04d "$mib")" > "$WORK/p.$id"
    host_cmp "$id" "$DISKS/$id.img" 16 1 "$WORK/p.$id"
done
echo "RESULT host.ro_md5_after=$(md5sum < "$DISKS/ro.img" | cut -d' ' -f1)"
""", job=JOB_DISKS, timeout=360)

# ----------------------------------------------------------------------------- fs
# Two boots on one image: a partition, ext4, a file and a raw pattern, then read back.
JOB_FS = GUEST_LIB + r"""
need_disks 1
phase=$(arg t.phase)
if [ "$phase" = write ]; then
    printf 'label: dos\nstart=2048, size=194560, type=83\n' | sfdisk -q /dev/sda && echo "RESULT sfdisk=ok"
    wait_until 30 test -b /dev/sda1 && echo "RESULT part=ok"
    mkfs.ext4 -q -F -L enl-fs /dev/sda1 && echo "RESULT mkfs=ok"
    mount -t ext4 /dev/sda1 /mnt && echo "RESULT mount=ok"
    pattern 4096 FILE > /mnt/data.bin && echo "hello from the first boot" > /mnt/hello.txt
    md5sum /mnt/data.bin | sed 's/ .*//; s/^/RESULT md5=/'
    sync
    umount /mnt && echo "RESULT umount=ok"
    e2fsck -n -f /dev/sda1 > /tmp/fsck.log 2>&1; echo "RESULT fsck=$?"; sed 's/^/FSCK /' /tmp/fsck.log
    pattern 16384 PATN > /tmp/pat
    dd if=/tmp/pat of=/dev/sda bs=65536 seek=1600 conv=fsync status=none && echo "RESULT raw_write=ok"
else
    wait_until 30 test -b /dev/sda1 && echo "RESULT part=ok"
    e2fsck -n -f /dev/sda1 > /tmp/fsck.log 2>&1; echo "RESULT fsck=$?"; sed 's/^/FSCK /' /tmp/fsck.log
    mount -t ext4 -o ro /dev/sda1 /mnt && echo "RESULT mount=ok"
    md5sum /mnt/data.bin | sed 's/ .*//; s/^/RESULT md5=/'
    echo "RESULT hello=$(tr ' ' _ < /mnt/hello.txt)"
    umount /mnt && echo "RESULT umount=ok"
    pattern 16384 PATN > /tmp/pat
fi
# the raw pattern at 100 MiB, read from the disk (not the page cache)
dd if=/dev/sda bs=65536 skip=1600 count=16 iflag=direct status=none | cmp -s - /tmp/pat && echo "RESULT raw_readback=same"
storvsc_errors
"""
scenario("fs", r"""
truncate -s 128M "$DISKS/fs.img"
vm write "t.phase=write" --disk "path=$DISKS/fs.img,id=fs"
pattern 16384 PATN > "$WORK/pat"
host_cmp pattern "$DISKS/fs.img" 1600 16 "$WORK/pat"
echo "RESULT host.mbr=$(od -A n -t x1 -j 510 -N 2 "$DISKS/fs.img" | tr -d ' \n')"
echo "RESULT host.ext4_magic=$(od -A n -t x1 -j $((1048576 + 1080)) -N 2 "$DISKS/fs.img" | tr -d ' \n')"
echo "RESULT host.file_lines=$(grep -a -c 'FILE [0-9]\{58\}' "$DISKS/fs.img")"
echo "RESULT host.md5_between=$(md5sum < "$DISKS/fs.img" | cut -d' ' -f1)"
vm read "t.phase=read" --disk "path=$DISKS/fs.img,id=fs,readonly=on"
echo "RESULT host.md5_after=$(md5sum < "$DISKS/fs.img" | cut -d' ' -f1)"
""", job=JOB_FS, timeout=480)

# ----------------------------------------------------------------------------- durable
# Write + fsync; the guest says so on its console and the host kills the VMM at that moment.
JOB_DURABLE = GUEST_LIB + r"""
need_disks 1
echo "RESULT write_cache=$(tr ' ' _ < /sys/block/sda/queue/write_cache)"
pattern 16384 DURA > /tmp/a; pattern 16384 DURB > /tmp/b
# A: through the page cache, then fsync (a SYNCHRONIZE CACHE with a write-back cache)
dd if=/tmp/a of=/dev/sda bs=65536 seek=128 conv=fsync status=none && echo "FSYNC-A-DONE"
sleep 3   # the host reads the VM's info meanwhile
# B: through the page cache again, then fsync; the host sends SIGKILL to the VMM when it
# sees the marker
dd if=/tmp/b of=/dev/sda bs=65536 seek=256 conv=fsync status=none && echo "FSYNC-B-DONE"
sleep 30
echo "STILL-ALIVE"
"""
scenario("durable", r"""
truncate -s 64M "$DISKS/dur.img"
pattern 16384 DURA > "$WORK/a"; pattern 16384 DURB > "$WORK/b"
start_bg dur "" --disk "path=$DISKS/dur.img,id=dur"
wait_guest FSYNC-A-DONE 240 && info after_a
wait_guest FSYNC-B-DONE 60 && kill -KILL "$VM_PID" && echo "RESULT host.killed=yes"
wait "$VM_PID"
echo "RESULT dur.rc=$?"
host_cmp a "$DISKS/dur.img" 128 16 "$WORK/a"
host_cmp b "$DISKS/dur.img" 256 16 "$WORK/b"
show dur
""", job=JOB_DURABLE, timeout=300)

# ----------------------------------------------------------------------------- full
# The host's file system fills up under the guest's writes: a dynamic VHDX (1 MiB blocks) and
# a sparse raw image on a 24 MiB tmpfs of their own. The guest writes 1 MiB to each, then 48
# MiB more than there is room for, then overwrites its first MiB (space already allocated).
JOB_FULL = GUEST_LIB + r"""
need_disks 2
disks="vhdx:$(by_size 96):VHX raw:$(by_size 80):RAW"
for spec in $disks; do
    k=${spec%%:*}; rest=${spec#*:}; d=${rest%%:*}; tag=${rest##*:}
    echo "RESULT $k.dev=$d"
    pattern 16384 "A$tag" > "/tmp/a.$k"; pattern 16384 "B$tag" > "/tmp/b.$k"
    dd if="/tmp/a.$k" of="/dev/$d" bs=65536 oflag=direct conv=fsync status=none; echo "RESULT $k.a_write=$?"
done
for spec in $disks; do
    k=${spec%%:*}; rest=${spec#*:}; d=${rest%%:*}
    dd if=/dev/zero of="/dev/$d" bs=1M seek=32 count=48 oflag=direct conv=fsync status=none 2>"/tmp/fill.$k"
    echo "RESULT $k.fill_rc=$?"; sed "s/^/FILL-$k /" "/tmp/fill.$k"
done
for spec in $disks; do
    k=${spec%%:*}; rest=${spec#*:}; d=${rest%%:*}
    dd if="/dev/$d" bs=65536 count=16 iflag=direct status=none | cmp -s - "/tmp/a.$k" && echo "RESULT $k.a_after_full=same"
    dd if="/tmp/b.$k" of="/dev/$d" bs=65536 oflag=direct conv=fsync status=none; echo "RESULT $k.b_write=$?"
    dd if="/dev/$d" bs=65536 count=16 iflag=direct status=none | cmp -s - "/tmp/b.$k" && echo "RESULT $k.b_readback=same"
done
echo "RESULT space_errors=$(dmesg | grep -ci 'space allocation failed')"
dmesg | grep -iE 'sd[a-z]|I/O error|sense' | tail -n 30 | sed 's/^/DMESG-FULL /'
echo "FULL-DONE"
"""
scenario("full", r"""
FULL=$WORK/full
mkdir -p "$FULL"
mount -t tmpfs -o size=24m tmpfs "$FULL" 2>/dev/null
trap 'umount -l "$FULL" "$DISKS" 2>/dev/null' EXIT
echo "RESULT host.full_fs=$(stat -f -c %T "$FULL") $(df -k "$FULL" | awk 'NR == 2 { print $2 }')"
"$ENL" image create "$FULL/f.vhdx" --size 96M --format vhdx --block-size 1M >/dev/null && echo "RESULT host.create=ok"
truncate -s 80M "$FULL/f.raw"
start_bg full "" --disk "path=$FULL/f.vhdx,id=vhdx" --disk "path=$FULL/f.raw,id=raw"
wait_guest FULL-DONE 240 && info full
echo "RESULT host.avail_kib=$(df -k "$FULL" | awk 'NR == 2 { print $4 }')"
stop_vm
"$ENL" image check "$FULL/f.vhdx" > "$WORK/full.check" 2>&1; echo "RESULT host.check=$?"; sed 's/^/FULL-CHECK /' "$WORK/full.check"
pattern 16384 BRAW > "$WORK/b.raw"; host_cmp raw_b "$FULL/f.raw" 0 16 "$WORK/b.raw"
# with room again (the raw image gone): the VHDX converts, with what the guest wrote last
rm -f "$FULL/f.raw"
"$ENL" image convert "$FULL/f.vhdx" "$WORK/f.conv" --format raw >/dev/null 2>&1; echo "RESULT host.convert=$?"
pattern 16384 BVHX > "$WORK/b.vhdx"; host_cmp vhdx_b "$WORK/f.conv" 0 16 "$WORK/b.vhdx"
rm -f "$WORK/f.conv"
""", job=JOB_FULL, timeout=300)

# ----------------------------------------------------------------------------- hotplug
# The guest only watches; it never asks for a rescan.
JOB_HOTPLUG = GUEST_LIB + r"""
need_disks 1
before=" $(ls /sys/block | grep '^sd' | tr '\n' ' ')"
echo "HOTPLUG-READY"
if ! wait_until 120 have_disks 2; then
    echo "RESULT added=timeout"; lsblk; dmesg | tail -n 40; exit 1
fi
new=
for b in /sys/block/sd*; do case "$before " in *" ${b##*/} "*) ;; *) new=${b##*/};; esac; done
echo "RESULT added=$new"
lsblk_all LSBLK-ADDED
echo "RESULT hot_serial=$(sg_inq -p 0x80 /dev/$new 2>/dev/null | sed -n 's/^ *Unit serial number: *//p')"
pattern 1024 HOT0 > /tmp/p
dd if=/tmp/p of="/dev/$new" bs=65536 seek=16 oflag=direct conv=fsync status=none && echo "RESULT hot_write=ok"
storvsc_errors   # none so far; removing a disk may log its failed cache flush, which is fine
echo "HOTPLUG-ADDED"
if wait_until 120 gone "$new"; then echo "RESULT removed=$new"; else echo "RESULT removed=timeout"; fi
lsblk_all LSBLK-REMOVED
dmesg | tail -n 20 | sed 's/^/DMESG-AFTER-REMOVE /'
# the disk that stays still works
dd if=/tmp/p of=/dev/sda bs=65536 seek=16 oflag=direct conv=fsync status=none && echo "RESULT base_write=ok"
echo "HOTPLUG-REMOVED"
"""
scenario("hotplug", r"""
truncate -s 64M "$DISKS/base.img"; truncate -s 40M "$DISKS/hot.img"
pattern 1024 HOT0 > "$WORK/hot"
start_bg hot "" --disk "path=$DISKS/base.img,id=base"
if wait_guest HOTPLUG-READY 240; then
    api add-disk "$DISKS/hot.img" --id hot --serial HOT-1 && echo "RESULT host.add=ok"
    wait_guest HOTPLUG-ADDED 150 && info added
    api remove-disk hot && echo "RESULT host.remove=ok"
    wait_guest HOTPLUG-REMOVED 150 && info removed
fi
stop_vm
host_cmp hot "$DISKS/hot.img" 16 1 "$WORK/hot"
host_cmp base "$DISKS/base.img" 16 1 "$WORK/hot"
""", job=JOB_HOTPLUG, timeout=420)

# ----------------------------------------------------------------------------- trim
JOB_TRIM = GUEST_LIB + r"""
need_disks 1
echo "RESULT discard_max_bytes=$(cat /sys/block/sda/queue/discard_max_bytes)"
echo "RESULT provisioning_mode=$(cat /sys/class/scsi_disk/*/provisioning_mode | head -n 1)"
mkfs.ext4 -q -F -E nodiscard,lazy_itable_init=0,lazy_journal_init=0 /dev/sda && mount -t ext4 /dev/sda /mnt && echo "RESULT mounted=ok"
# 64 MiB that is not zeros (a VMM may skip writing zeros)
yes ENLIGHTEN-TRIM-TEST | dd of=/mnt/fill bs=1M count=64 iflag=fullblock conv=fsync status=none && echo "RESULT fill=ok"
sync
echo "TRIM-FILLED"
sleep 3   # the host measures the image file meanwhile
rm /mnt/fill && sync
fstrim -v /mnt > /tmp/fstrim.out 2>&1; echo "RESULT fstrim_rc=$?"; sed 's/^/FSTRIM /' /tmp/fstrim.out
sync
storvsc_errors
echo "TRIM-DONE"
"""
scenario("trim", r"""
truncate -s 256M "$DISKS/trim.img"
start_bg trim "" --disk "path=$DISKS/trim.img,id=trim"
wait_guest TRIM-FILLED 240 && echo "RESULT host.filled=$(allocated "$DISKS/trim.img")"
wait_guest TRIM-DONE 120 && echo "RESULT host.trimmed=$(allocated "$DISKS/trim.img")" && info trim
stop_vm
""", job=JOB_TRIM, timeout=360)

# ----------------------------------------------------------------------------- hostile
# What a guest's user space can send (root: SG_IO passes any CDB): commands the disk does
# not know, addresses past its end, CDB lengths that disagree with the buffer, huge counts,
# and scans of targets and LUNs that do not exist. Each must get an error, and the disks
# (this one and another) must keep working. Malformed *packets* (bad SRB lengths, buffers
# outside guest RAM, wrong packet types, requests after close) cannot be sent from user
# space: the unit tests (tests/unit/storvsp_test.cpp) and the fuzz target cover those.
JOB_HOSTILE = GUEST_LIB + r"""
need_disks 2
d=$(by_size 64); other=$(by_size 24)
echo "RESULT dev=$d"; echo "RESULT other=$other"
hctl=$(basename "$(readlink -f /sys/block/$d/device)")
host=host${hctl%%:*}
echo "RESULT scsi_host=$host"; echo "RESULT hctl=$hctl"
pattern 1024 GOOD > /tmp/good
dd if=/tmp/good of=/dev/$d bs=65536 seek=16 oflag=direct conv=fsync status=none && echo "RESULT before_write=ok"
# sgr NAME ARGS...: sg_raw with its output tagged and its exit status as a RESULT
sgr() { name=$1; shift; sg_raw "$@" > /tmp/sg.$name 2>&1; echo "RESULT sg_$name=$?"; sed "s/^/SG-$name /" /tmp/sg.$name; }
# 1. an operation code the disk does not implement (vendor specific 0xc1)
sgr badop /dev/$d c1 00 00 00 00 00 00 00 00 00
# 2. READ(10) of the block right past the end (64 MiB = 131072 blocks: LBA 0x20000)
sgr pastend -r 512 /dev/$d 28 00 00 02 00 00 00 00 01 00
# 3. READ(10) of 8 blocks into a 512-byte buffer (the CDB asks for more than the SRB has)
sgr shortbuf_read -r 512 /dev/$d 28 00 00 00 08 00 00 00 08 00
# 4. WRITE(10) of 8 blocks with 512 bytes of data at LBA 2048 (where GOOD is: nothing of
# it may change)
sgr shortbuf_write -s 512 -i /dev/zero /dev/$d 2a 00 00 00 08 00 00 00 08 00
# 5. READ(16) of 0xffffffff blocks into a 4 KiB buffer
sgr huge -r 4096 /dev/$d 88 00 00 00 00 00 00 00 00 00 ff ff ff ff 00 00
# 6. WRITE(16) at the last possible LBA (wraps around 2^64)
sgr wrap -s 4096 -i /dev/zero /dev/$d 8a 00 ff ff ff ff ff ff ff ff 00 00 00 08 00 00
# 7. READ(6) at its largest LBA (0x1fffff) for 255 blocks into a 512-byte buffer
sgr read6 -r 512 /dev/$d 08 1f ff ff ff 00
# 8. scans of targets and LUNs that do not exist (INQUIRY, REPORT LUNS to nobody)
before=$(ls /sys/block | grep -c '^sd')
echo "0 1 0" > /sys/class/scsi_host/$host/scan 2>/dev/null; echo "RESULT scan_target_rc=$?"
echo "0 0 200" > /sys/class/scsi_host/$host/scan 2>/dev/null; echo "RESULT scan_lun_rc=$?"
echo "- - -" > /sys/class/scsi_host/$host/scan 2>/dev/null; echo "RESULT scan_all_rc=$?"
sleep 1
echo "RESULT disks_before_scans=$before"; echo "RESULT disks_after_scans=$(ls /sys/block | grep -c '^sd')"
lsblk_all LSBLK-AFTER
# Afterwards: both disks still work and hold what they should.
dd if=/dev/$d bs=65536 skip=16 count=1 iflag=direct status=none | cmp -s - /tmp/good && echo "RESULT after_read=same"
pattern 1024 AFTR > /tmp/after
dd if=/tmp/after of=/dev/$d bs=65536 seek=32 oflag=direct conv=fsync status=none && echo "RESULT after_write=ok"
dd if=/tmp/after of=/dev/$other bs=65536 seek=16 oflag=direct conv=fsync status=none && echo "RESULT other_write=ok"
dd if=/dev/$other bs=65536 skip=16 count=1 iflag=direct status=none | cmp -s - /tmp/after && echo "RESULT other_read=same"
echo "RESULT state=$(cat /sys/block/$d/device/state)"
dmesg | grep -E 'hv_storvsc|sd [0-9]|scsi [0-9]|offlin|reset' | sed 's/^/HOSTILE-DMESG /'
echo "HOSTILE-DONE"
"""
scenario("hostile", r"""
truncate -s 64M "$DISKS/h.img"; truncate -s 24M "$DISKS/o.img"
start_bg hostile "" --disk "path=$DISKS/h.img,id=h" --disk "path=$DISKS/o.img,id=o,bus=ide"
wait_guest HOSTILE-DONE 240
info hostile
stop_vm
pattern 1024 GOOD > "$WORK/good"; pattern 1024 AFTR > "$WORK/after"
host_cmp good "$DISKS/h.img" 16 1 "$WORK/good"
host_cmp after "$DISKS/h.img" 32 1 "$WORK/after"
host_cmp other "$DISKS/o.img" 16 1 "$WORK/after"
# The block at LBA 0x20000 (past the end) must not exist in the file: it is exactly 64 MiB.
echo "RESULT host.h_size=$(stat -c %s "$DISKS/h.img")"
""", job=JOB_HOSTILE, timeout=360)

# ----------------------------------------------------------------------------- vhdx
# VHDX disks made by `enlighten image` in the test host: a dynamic one, a fixed one, a dynamic
# one with 4 KiB sectors and 1 MiB blocks (QEMU 7.2 cannot open it: its vhdx.c takes 512-byte
# logical sectors only, ENOTSUP), the top of a chain of three
# differencing disks, and two dynamic ones for fstrim. Then the host checks, converts and
# merges them with `enlighten image`; and three SIGKILLs in a write+fsync storm on one image,
# each reopen replaying the log of the last.
JOB_VHDX = GUEST_LIB + r"""
if [ "$(arg t.mode)" = storm ]; then
    need_disks 1
    k=$(arg t.round)
    i=0
    while [ $i -lt 20 ]; do
        s=$(((k - 1) * 20 + i))
        pattern 1024 "$(printf 'K%d%02d' "$k" "$i")" > /tmp/p
        dd if=/tmp/p of=/dev/sda bs=65536 seek=$((s * 17)) oflag=direct conv=fsync status=none || echo "STORM-DD-FAILED $i"
        echo "FSYNCED-$i-"
        i=$((i + 1))
    done
    echo "STORM-DONE"
    exit 0
fi
need_disks 6
lsblk_all LSBLK
for mib in 48 40 36; do
    n=$(by_size $mib)
    pattern 1024 "$(printf 'V%03d' "$mib")" > "/tmp/p.$mib"
    dd if="/tmp/p.$mib" of="/dev/$n" bs=65536 seek=16 oflag=direct conv=fsync status=none && echo "RESULT vwrite.$mib=ok"
    dd if="/dev/$n" bs=65536 skip=16 count=1 iflag=direct status=none | cmp -s - "/tmp/p.$mib" && echo "RESULT vread.$mib=same"
    echo "RESULT lbs.$mib=$(cat /sys/block/$n/queue/logical_block_size)"
done
# the chain: the base's 1 MiB pattern, read through two differencing disks; then 64 KiB at 512 KiB
top=$(by_size 44)
pattern 16384 BASE > /tmp/base
dd if="/dev/$top" bs=65536 count=16 iflag=direct status=none | cmp -s - /tmp/base && echo "RESULT chain_read=same"
pattern 1024 TOP0 > /tmp/top
dd if=/tmp/top of="/dev/$top" bs=65536 seek=8 oflag=direct conv=fsync status=none && echo "RESULT chain_write=ok"
# fstrim: the same 16 MiB file written and deleted on both, trimmed on one
for mib in 64 66; do
    n=$(by_size $mib); mkdir -p "/mnt/$mib"
    mkfs.ext4 -q -F -E lazy_itable_init=0,lazy_journal_init=0 "/dev/$n" && mount -t ext4 "/dev/$n" "/mnt/$mib" || echo "RESULT mkfs.$mib=failed"
    dd if=/dev/urandom of="/mnt/$mib/f" bs=1M count=16 conv=fsync status=none
    rm "/mnt/$mib/f"; sync
done
fstrim -v /mnt/66 | sed 's/^/FSTRIM /'
umount /mnt/64 /mnt/66 && echo "RESULT umount=ok"
storvsc_errors
"""
scenario("vhdx", r"""
img() { "$ENL" image "$@"; }
cd "$DISKS"
img create dyn.vhdx --size 48M --format vhdx >/dev/null && echo "RESULT host.create_dyn=ok"
img create fixed.vhdx --size 40M --format vhdx --type fixed >/dev/null && echo "RESULT host.create_fixed=ok"
img create s4k.vhdx --size 36M --format vhdx --sector-size 4096 --block-size 1M >/dev/null && echo "RESULT host.create_4k=ok"
truncate -s 44M base.raw
pattern 16384 BASE | dd of=base.raw conv=notrunc status=none
img convert base.raw base.vhdx --format vhdx >/dev/null && echo "RESULT host.convert_base=ok"
img create mid.vhdx --parent base.vhdx >/dev/null && img create top.vhdx --parent mid.vhdx >/dev/null && echo "RESULT host.chain=ok"
img create trim64.vhdx --size 64M --format vhdx >/dev/null; img create trim66.vhdx --size 66M --format vhdx >/dev/null
base_md5=$(md5sum < base.vhdx | cut -d' ' -f1)
start_bg vhdx "" --disk "path=$DISKS/dyn.vhdx,id=dyn" --disk "path=$DISKS/fixed.vhdx,format=vhdx,id=fixed" \
    --disk "path=$DISKS/s4k.vhdx,id=s4k" --disk "path=$DISKS/top.vhdx,id=top" \
    --disk "path=$DISKS/trim64.vhdx,id=trim64" --disk "path=$DISKS/trim66.vhdx,id=trim66"
wait_guest ENLIGHTEN-JOB-EXIT 240
info vhdx
stop_vm
for f in dyn fixed s4k top trim64 trim66; do
    img check "$f.vhdx" >"$WORK/check.$f" 2>&1; echo "RESULT host.check_$f=$?"; sed "s/^/CHECK-$f /" "$WORK/check.$f"
done
for d in dyn:48 fixed:40 s4k:36; do
    id=${d%%:*}; mib=${d##*:}
    img convert "$id.vhdx" "$id.raw" --format raw >/dev/null
    pattern 1024 "$(printf 'V%03d' "$mib")" > "$WORK/p.$id"
    host_cmp "$id" "$id.raw" 16 1 "$WORK/p.$id"
    echo "RESULT host.size_$id=$(stat -c %s "$id.raw")"
    [ "$id" = s4k ] && { rm -f "$id.raw"; continue; }
    # QEMU's view of the same file: clean, and the same bytes
    "$QEMU_IMG" check -f vhdx "$id.vhdx" > "$WORK/qcheck.$id" 2>&1; echo "RESULT host.qcheck_$id=$?"
    sed "s/^/QCHECK-$id /" "$WORK/qcheck.$id"
    "$QEMU_IMG" convert -f vhdx -O raw "$id.vhdx" "$id.q.raw" && cmp -s "$id.raw" "$id.q.raw" && echo "RESULT host.qemu_$id=same"
    rm -f "$id.raw" "$id.q.raw"
done
cp base.raw expect.raw
pattern 1024 TOP0 | dd of=expect.raw bs=65536 seek=8 conv=notrunc status=none
img convert top.vhdx top.raw --format raw >/dev/null
cmp -s top.raw expect.raw && echo "RESULT host.top=same"
echo "RESULT host.base_unchanged=$([ "$(md5sum < base.vhdx | cut -d' ' -f1)" = "$base_md5" ] && echo yes || echo no)"
img convert mid.vhdx mid.raw --format raw >/dev/null
cmp -s mid.raw base.raw && echo "RESULT host.mid_before_merge=base"
img merge top.vhdx > "$WORK/merge.out" 2>&1; echo "RESULT host.merge=$?"; sed 's/^/MERGE /' "$WORK/merge.out"
img convert mid.vhdx mid2.raw --format raw >/dev/null
cmp -s mid2.raw expect.raw && echo "RESULT host.mid_after_merge=same"
rm -f top.raw mid.raw mid2.raw expect.raw
for f in trim64 trim66; do echo "RESULT host.alloc_$f=$(allocated "$f.vhdx")"; done

# The write storm: 3 rounds on one dynamic image with 1 MiB blocks, each killed after a
# random number of fsynced writes; each round's VM opens the image the last one was killed on.
img create storm.vhdx --size 72M --format vhdx --block-size 1M >/dev/null
for k in 1 2 3; do
    n=$(( $(od -An -N1 -tu1 /dev/urandom) % 12 + 1 ))
    start_bg "storm$k" "t.mode=storm t.round=$k" --disk "path=$DISKS/storm.vhdx,id=storm"
    if wait_guest "FSYNCED-$n-" 240; then kill -KILL "$VM_PID"; fi
    wait "$VM_PID"; echo "RESULT storm$k.rc=$?"
    last=$(tr -d '\r' < "$WORK/storm$k.serial" | sed -n 's/^FSYNCED-\([0-9]*\)-$/\1/p' | tail -n 1)
    eval "last$k=\$last"
    echo "RESULT host.storm$k.fsynced=$last"
    img check storm.vhdx > "$WORK/storm.check" 2>&1; echo "RESULT host.storm$k.check=$?"; sed "s/^/STORM-CHECK /" "$WORK/storm.check"
    # every write fsynced in this round and the earlier ones (whose logs were replayed) is there
    img convert storm.vhdx "$WORK/storm.raw" --format raw >/dev/null 2>&1 || echo "RESULT host.storm$k.convert=failed"
    bad=0; j=1
    while [ $j -le $k ]; do
        eval "lj=\$last$j"; i=0
        while [ -n "$lj" ] && [ $i -le "$lj" ]; do
            pattern 1024 "$(printf 'K%d%02d' "$j" "$i")" > "$WORK/p"
            dd if="$WORK/storm.raw" bs=65536 skip=$((((j - 1) * 20 + i) * 17)) count=1 2>/dev/null | cmp -s - "$WORK/p" || bad=$((bad + 1))
            i=$((i + 1))
        done
        j=$((j + 1))
    done
    echo "RESULT host.storm$k.lost=$bad"
    rm -f "$WORK/storm.raw"
    show "storm$k" | grep -v '^FSYNCED'
done
# After the last kill: our repair replays the log, then QEMU finds the file clean and reads
# the same data (QEMU refuses a VHDX whose log still needs replaying).
img check --repair storm.vhdx > "$WORK/storm.repair" 2>&1; echo "RESULT host.storm_repair=$?"; sed 's/^/STORM-REPAIR /' "$WORK/storm.repair"
"$QEMU_IMG" check -f vhdx storm.vhdx > "$WORK/storm.qcheck" 2>&1; echo "RESULT host.storm_qcheck=$?"; sed 's/^/STORM-QCHECK /' "$WORK/storm.qcheck"
img convert storm.vhdx storm.raw --format raw >/dev/null
"$QEMU_IMG" convert -f vhdx -O raw storm.vhdx storm.q.raw && cmp -s storm.raw storm.q.raw && echo "RESULT host.storm_qemu=same"
rm -f storm.raw storm.q.raw
""", job=JOB_VHDX, timeout=600, files={"QEMU_IMG": program("qemu-img")})
