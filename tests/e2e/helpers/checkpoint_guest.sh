#!/bin/sh
# The Debian guest's side of the checkpoint scenario (test_debian.py), copied into the guest
# with `enlighten remote copy-file` and run from its root shell: checkpoint_guest.sh STEP.
# Each step prints its CKPT-<STEP> lines on the console, then "CKPT-DONE <step>": the host
# types the next command only after that, so the terminal's echo of it cannot land inside a
# line the host parses.
LOG=/mnt/data/log.txt

# summary FILE: how many lines, and whether line k is "line k" for every k (no line lost,
# doubled, torn or out of order).
summary() {
    echo "lines=$(wc -l < "$1") seq=$(awk '{ if ($0 != "line " NR) bad = 1 } END { print bad ? "broken" : "ok" }' "$1")"
}
wait_disk() {
    for i in $(seq 150); do [ -b "$1" ] && return 0; sleep 0.2; done
    return 1
}

case "$1" in
mount)
    # the hot-added data disk: an ext4 file system, and a writer that appends a line every
    # 0.1 s and makes it durable (sync FILE: fsync)
    wait_disk /dev/sdb && mkfs.ext4 -q -F /dev/sdb && mkdir -p /mnt/data && mount /dev/sdb /mnt/data
    rc=$?
    ( i=0; while :; do i=$((i + 1)); echo "line $i" >> $LOG; sync $LOG; sleep 0.1; done ) </dev/null >/dev/null 2>&1 &
    echo $! > /root/writer.pid
    echo "CKPT-MOUNTED rc=$rc vssd=$(systemctl is-active hv-vss-daemon.service)"
    ;;
parent)
    # the checkpoint's parent image, attached read-only as the next disk
    wait_disk /dev/sdc || { echo "CKPT-PARENT no-disk"; exit; }
    e2fsck -fn /dev/sdc > /root/fsck.log 2>&1
    rc=$?
    debugfs -R "cat /log.txt" /dev/sdc 2>/dev/null > /root/parent.txt
    echo "CKPT-PARENT fsck=$rc $(summary /root/parent.txt)"
    sed 's/^/CKPT-FSCK-LOG /' /root/fsck.log
    ;;
live)
    # the running file system: it went on, and begins with what the parent holds
    n=$(wc -l < /root/parent.txt)
    head -n "$n" $LOG | cmp -s - /root/parent.txt && prefix=yes || prefix=no
    echo "CKPT-LIVE $(summary $LOG) prefix=$prefix"
    ;;
stop-vssd)
    systemctl stop hv-vss-daemon.service
    echo "CKPT-STOP-VSSD $(systemctl is-active hv-vss-daemon.service)"
    ;;
final)
    kill "$(cat /root/writer.pid)"
    sleep 0.3
    sync
    echo "CKPT-FINAL $(summary $LOG) parent_prefix=$(head -n "$(wc -l < /root/parent.txt)" $LOG | cmp -s - /root/parent.txt && echo yes || echo no)"
    journalctl -b -o cat --no-pager | grep -E 'VSS: (op=|userspace daemon)' | sed 's/^/CKPT-JOURNAL /'
    dmesg | grep -E 'VSS' | sed 's/^/CKPT-DMESG /'
    umount /mnt/data && echo "CKPT-UMOUNT ok"
    ;;
esac
echo "CKPT-DONE $1"
