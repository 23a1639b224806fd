"""End-to-end tests of the storage VSP: SCSI and IDE disks that the unmodified Debian guest's
hv_storvsc + sd_mod drive, through

    enlighten run ... --disk path=FILE[,format=raw][,readonly=on][,bus=scsi|ide][,id=NAME][,serial=TEXT]
    enlighten remote --api-socket S add-disk PATH [--id ID] [--readonly] [--serial S]
    enlighten remote --api-socket S remove-disk ID
    enlighten remote --api-socket S info   ->  "disks": [...], "storage_channels": [...]

Every test checks one run of the "storage" session (storage_runs.py: one test-host boot for
all of them). What is asserted is what the guest itself reports (lsblk, /sys, dmesg, sg3
tools, data read back) and what the host's image file holds afterwards (read with dd, cmp,
od, stat in the test host)."""

from __future__ import annotations

import hashlib
import re
import unittest

from harness import RunResult, describe, kv, results, section, vm_info, vmm_log
from storage_runs import DISK_SIZES, IDE_CLASS, MULTICHANNEL, SCSI_CLASS, STORAGE

MiB = 1 << 20
GUID_RE = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"


def pattern(lines: int, tag: str) -> bytes:
    """The same bytes as the shell function `pattern`."""
    return b"".join(b"%s %058d\n" % (tag.encode(), i) for i in range(lines))


def tagged(text: str, tag: str) -> list[str]:
    return [m.group(1).rstrip() for m in re.finditer(rf"^{re.escape(tag)} (.*)$", text, re.M)]


def lsblk_rows(text: str, tag: str) -> list[dict[str, str]]:
    return [dict(re.findall(r'(\w+)="([^"]*)"', line)) for line in tagged(text, tag)]


def disks_by_id(info: dict) -> dict[str, dict]:
    return {d["id"]: d for d in info.get("disks", [])}


# `enlighten run` ends with 5 after a power-off through the API (docs/api.md), which the
# scenarios' stop_vm uses.
API_POWER_OFF = "5"


class StorageCase(unittest.TestCase):

    def run_of(self, key: str) -> RunResult:
        return STORAGE.result(self, key)

    def booted(self, res: RunResult, name: str) -> str:
        """The VMM accepted its command line and the guest ran /init; returns its console."""
        console = section(res, name)
        self.assertIn("ENLIGHTEN-INIT", console,
                      f"boot '{name}' never reached the guest's /init; enlighten said:\n"
                      f"{vmm_log(res, name)[-2000:]}" + describe(res))
        return console

    def assertNoStorvscErrors(self, res: RunResult, console: str) -> None:
        self.assertEqual(tagged(console, "STORVSC-ERROR"), [], "storvsc/sd errors in the guest" + describe(res))

    def assertCleanVmmLog(self, res: RunResult, name: str) -> None:
        """No sanitizer report, no assertion, no error line from the VMM."""
        log = vmm_log(res, name)
        for bad in ("AddressSanitizer", "runtime error:", "Assertion", "terminate called"):
            self.assertNotIn(bad, log, describe(res))


class DiskTests(StorageCase):
    """The "disks" run: SCSI LUNs s0, s1, s2 and read-only SCSI disk ro on scsi0, the
    write-through disk wt on a second SCSI controller (scsi1), and IDE disk ide0, on one guest
    boot."""

    res: RunResult
    console: str

    def setUp(self) -> None:
        self.res = self.run_of("disks")
        self.console = self.booted(self.res, "disks")
        self.g, self.h = kv(self.console), results(self.res)
        self.rows = lsblk_rows(self.console, "LSBLK")
        self.by_size = {int(r["SIZE"]): r for r in self.rows}

    def hctl(self, mib: int) -> list[int]:
        row = self.by_size.get(mib * MiB)
        self.assertIsNotNone(row, f"no {mib} MiB disk in lsblk" + describe(self.res))
        return [int(x) for x in row["HCTL"].split(":")]

    def test_lsblk_shows_every_disk_with_its_exact_size(self) -> None:
        res = self.res
        self.assertIn("ENLIGHTEN-JOB-EXIT 0", self.console, describe(res))
        self.assertEqual(len(self.rows), len(DISK_SIZES), "lsblk shows every disk" + describe(res))
        self.assertEqual(sorted(self.by_size), sorted(m * MiB for m in DISK_SIZES.values()),
                         "lsblk shows each disk with its exact size" + describe(res))
        sizes64 = sorted(int(line.split()[1]) for line in tagged(self.console, "SIZE64"))
        self.assertEqual(sizes64, sorted(m * MiB for m in DISK_SIZES.values()), "blockdev --getsize64" + describe(res))
        for r in self.rows:
            self.assertEqual(r["TYPE"], "disk", describe(res))
            self.assertEqual((r["VENDOR"].strip(), r["MODEL"].strip()), ("Msft", "Virtual Disk"), describe(res))
            self.assertEqual(r["RO"], "1" if int(r["SIZE"]) == DISK_SIZES["ro"] * MiB else "0", describe(res))
        self.assertEqual(self.h.get("disks.rc"), API_POWER_OFF, "the VM ran until the API powered it off" + describe(res))

    def test_scsi_disks_are_luns_of_one_controller_and_ide_has_its_own(self) -> None:
        res = self.res
        scsi = [self.hctl(DISK_SIZES[k]) for k in ("s0", "s1", "s2", "ro")]
        self.assertEqual(len({x[0] for x in scsi}), 1, "the SCSI disks are LUNs of one controller" + describe(res))
        self.assertEqual(len({tuple(x[1:]) for x in scsi}), 4, describe(res))
        self.assertNotEqual(self.hctl(DISK_SIZES["ide0"])[0], scsi[0][0], "the IDE disk has its own SCSI host" + describe(res))
        disks = disks_by_id(vm_info(res, "disks"))
        self.assertEqual(sorted(disks), sorted(DISK_SIZES), describe(res))
        for name, mib in DISK_SIZES.items():
            d = disks[name]
            self.assertEqual(d["size_bytes"], mib * MiB, describe(res))
            self.assertEqual((d["bus"], d["read_only"], d["format"]),
                             ("ide" if name == "ide0" else "scsi", name == "ro", "raw"), describe(res))
            self.assertEqual(d["lun"], self.hctl(mib)[3], f"{name}: the API's LUN is the guest's" + describe(res))
        self.assertEqual(len({disks[k]["controller"] for k in ("s0", "s1", "s2", "ro")}), 1, describe(res))
        self.assertNotEqual(disks["ide0"]["controller"], disks["s0"]["controller"], describe(res))
        # A second SCSI controller (controller=1): its own VMBus device, so its own SCSI host.
        self.assertEqual((disks["s0"]["controller"], disks["wt"]["controller"]), ("scsi0", "scsi1"), describe(res))
        wt = self.hctl(DISK_SIZES["wt"])
        self.assertNotIn(wt[0], {scsi[0][0], self.hctl(DISK_SIZES["ide0"])[0]},
                         "the second SCSI controller is a SCSI host of its own" + describe(res))

    def test_the_guest_sees_the_write_cache_as_configured(self) -> None:
        # cache=writethrough: the caching mode page says WCE=0 and sd reports "write through";
        # the others have a volatile cache that SYNCHRONIZE CACHE flushes ("write back").
        res = self.res
        cache = dict(line.split(" ", 1) for line in tagged(self.console, "CACHE"))
        self.assertEqual(cache.get(str(DISK_SIZES["wt"])), "write through", describe(res))
        for name in ("s0", "s1", "s2"):
            self.assertEqual(cache.get(str(DISK_SIZES[name])), "write back", name + describe(res))
        disks = disks_by_id(vm_info(res, "disks"))
        self.assertEqual({k: d["write_cache"] for k, d in disks.items() if k != "ide0"},
                         {"s0": True, "s1": True, "s2": True, "ro": False, "wt": False}, describe(res))

    def test_ide_disk_is_found_through_its_ide_channel(self) -> None:
        # Each block device hangs off a VMBus device: the IDE disk off one of the IDE class,
        # the SCSI disks off one of the SCSI class; all bound to hv_storvsc.
        res = self.res
        vmbus = {}
        for v in tagged(self.console, "VMBUS"):
            m = re.match(rf"({GUID_RE}) class=\{{({GUID_RE})\}} driver=(\S*)", v)
            if m:
                vmbus[m.group(1)] = (m.group(2), m.group(3))
        syspath = dict(line.split(" ", 1) for line in tagged(self.console, "SYSPATH"))
        self.assertEqual(len(syspath), len(DISK_SIZES), describe(res))
        for r in self.rows:
            guids = [x for x in re.findall(GUID_RE, syspath[r["NAME"]]) if x in vmbus]
            self.assertEqual(len(guids), 1, f"{r['NAME']}: {syspath[r['NAME']]}" + describe(res))
            cls, drv = vmbus[guids[0]]
            want = IDE_CLASS if int(r["SIZE"]) == DISK_SIZES["ide0"] * MiB else SCSI_CLASS
            self.assertEqual((cls, drv), (want, "hv_storvsc"), f"{r['NAME']} ({r['SIZE']} bytes)" + describe(res))

    def test_each_disk_holds_what_the_guest_wrote_in_its_own_file(self) -> None:
        res = self.res
        disks = disks_by_id(vm_info(res, "disks"))
        for name, mib in DISK_SIZES.items():
            if name == "ro":
                continue
            self.assertEqual(self.g.get(f"write.{mib}"), "ok", describe(res))
            self.assertEqual(self.g.get(f"readback.{mib}"), "same", describe(res))
            self.assertEqual(self.h.get(f"host.{name}"), "same", f"{name}.img holds what the guest wrote to it" + describe(res))
            self.assertGreater(disks[name]["writes"], 0, describe(res))
            self.assertGreaterEqual(disks[name]["bytes_written"], 65536, describe(res))
            self.assertEqual(disks[name]["errors"], 0, describe(res))
        self.assertNoStorvscErrors(res, self.console)

    def test_read_only_disk_rejects_writes_and_the_guest_reports_write_protect(self) -> None:
        res, g, h = self.res, self.g, self.h
        self.assertEqual(g.get("ro_wp_probe"), "yes", "dmesg: '[sdX] Write Protect is on'" + describe(res))
        self.assertEqual((g.get("ro_sys"), g.get("ro_getro")), ("1", "1"), describe(res))
        self.assertEqual(g.get("ro_read"), "same", "reads work" + describe(res))
        # writing to the read-only block device fails (the kernel refuses it)
        self.assertNotEqual(g.get("ro_dd_rc", "0"), "0", describe(res))
        self.assertRegex("\n".join(tagged(self.console, "RO-DD-ERROR")), r"Operation not permitted|Read-only file system",
                         describe(res))
        # a WRITE(10) sent with SG_IO reaches the disk, which answers CHECK CONDITION,
        # DATA PROTECT / WRITE PROTECTED; storvsc logs the failed command (cmd 0x2a)
        self.assertNotEqual(g.get("ro_sg_raw_rc", "0"), "0", describe(res))
        sg = "\n".join(tagged(self.console, "RO-SG-RAW"))
        self.assertRegex(sg, r"Data [Pp]rotect", describe(res))
        self.assertRegex(sg, r"[Ww]rite protected", describe(res))
        self.assertRegex("\n".join(tagged(self.console, "RO-DMESG")), r"hv_storvsc .*cmd 0x2a status: scsi 0x2 ",
                         describe(res))
        self.assertRegex(h.get("host.ro_md5_before", ""), r"^[0-9a-f]{32}$", describe(res))
        self.assertEqual(h.get("host.ro_md5_after"), h.get("host.ro_md5_before"), "the file is unchanged" + describe(res))
        d = disks_by_id(vm_info(res, "disks"))["ro"]
        self.assertEqual((d["writes"], d["bytes_written"]), (0, 0), describe(res))
        self.assertGreaterEqual(d["errors"], 1, "the refused WRITE is counted" + describe(res))


class FilesystemTests(StorageCase):
    """The "fs" run: boot "write" makes a partition and ext4 and writes; boot "read" (the same
    image, read-only) checks and reads it all back."""

    def setUp(self) -> None:
        self.res = self.run_of("fs")
        self.h = results(self.res)
        self.md5 = hashlib.md5(pattern(4096, "FILE")).hexdigest()

    def test_mkfs_write_sync_umount_and_fsck_is_clean(self) -> None:
        res = self.res
        w = kv(self.booted(res, "write"))
        self.assertEqual(self.h.get("write.rc"), "0", describe(res))
        for key in ("sfdisk", "part", "mkfs", "mount", "umount", "raw_write"):
            self.assertEqual(w.get(key), "ok", f"first boot: {key}" + describe(res))
        self.assertEqual(w.get("fsck"), "0", "e2fsck -n -f is clean after umount" + describe(res))
        self.assertEqual(w.get("md5"), self.md5, describe(res))
        self.assertEqual(w.get("raw_readback"), "same", describe(res))
        self.assertNoStorvscErrors(res, section(res, "write"))

    def test_the_host_file_holds_exactly_what_the_guest_wrote(self) -> None:
        res, h = self.res, self.h
        self.assertEqual(h.get("host.pattern"), "same", "the raw pattern at 100 MiB" + describe(res))
        self.assertEqual(h.get("host.mbr"), "55aa", "sfdisk's MBR signature" + describe(res))
        self.assertEqual(h.get("host.ext4_magic"), "53ef", "the ext4 superblock at 1 MiB" + describe(res))
        self.assertEqual(h.get("host.file_lines"), "4096", "the file's 4096 lines, once each" + describe(res))

    def test_a_second_boot_reads_the_same_data_back(self) -> None:
        res = self.res
        r = kv(self.booted(res, "read"))
        self.assertEqual(self.h.get("read.rc"), "0", describe(res))
        for key in ("part", "mount", "umount"):
            self.assertEqual(r.get(key), "ok", f"second boot: {key}" + describe(res))
        self.assertEqual(r.get("fsck"), "0", describe(res))
        self.assertEqual(r.get("md5"), self.md5, describe(res))
        self.assertEqual(r.get("hello"), "hello_from_the_first_boot", describe(res))
        self.assertEqual(r.get("raw_readback"), "same", describe(res))
        self.assertEqual(self.h.get("host.md5_after"), self.h.get("host.md5_between"),
                         "the read-only second boot changed nothing" + describe(res))
        self.assertNoStorvscErrors(res, section(res, "read"))


class DurabilityTests(StorageCase):

    def test_fsynced_data_is_in_the_host_file_after_sigkill(self) -> None:
        res = self.run_of("durable")
        console = self.booted(res, "dur")
        g, h = kv(console), results(res)
        self.assertEqual(g.get("write_cache"), "write_back", "the disk reports a write-back cache (WCE=1)" + describe(res))
        self.assertIn("FSYNC-B-DONE", console, describe(res))
        self.assertNotIn("STILL-ALIVE", console, describe(res))
        self.assertEqual(h.get("host.killed"), "yes", describe(res))
        self.assertEqual(h.get("dur.rc"), "137", "the VMM died of SIGKILL" + describe(res))
        self.assertEqual(h.get("host.a"), "same", "fsync'ed before: in the file" + describe(res))
        self.assertEqual(h.get("host.b"), "same", "fsync'ed right before the SIGKILL: in the file" + describe(res))
        d = disks_by_id(vm_info(res, "after_a"))["dur"]
        self.assertGreater(d["flushes"], 0, "the guest's fsync became a flush (SYNCHRONIZE CACHE)" + describe(res))
        self.assertGreaterEqual(d["bytes_written"], MiB, describe(res))
        self.assertEqual(d["errors"], 0, describe(res))
        self.assertNoStorvscErrors(res, console)


class FullHostDiskTests(StorageCase):
    """The file system under a dynamic VHDX and a sparse raw image fills up (a 24 MiB tmpfs)
    while the guest writes: its writes fail with a SCSI error, not the VMM, and what it wrote
    and flushed before and after is intact."""

    def setUp(self) -> None:
        self.res = self.run_of("full")
        self.g, self.h = kv(self.booted(self.res, "full")), results(self.res)

    def test_writes_past_the_room_fail_in_the_guest_with_a_space_allocation_error(self) -> None:
        self.assertEqual(self.h.get("host.full_fs", "").split()[0], "tmpfs", describe(self.res))
        for k in ("vhdx", "raw"):
            self.assertEqual(self.g.get(f"{k}.a_write"), "0", f"{k}: 1 MiB with room to spare" + describe(self.res))
            self.assertNotIn(self.g.get(f"{k}.fill_rc"), ("0", None), f"{k}: 48 MiB into 24" + describe(self.res))
        self.assertGreaterEqual(int(self.g.get("space_errors", "0")), 1,
                                "the guest's kernel names the sense (DATA PROTECT, SPACE ALLOCATION FAILED)"
                                + describe(self.res, 6000))

    def test_the_guest_reads_and_rewrites_what_it_has_while_the_host_disk_is_full(self) -> None:
        for k in ("vhdx", "raw"):
            self.assertEqual(self.g.get(f"{k}.a_after_full"), "same", k + describe(self.res, 6000))
            self.assertEqual(self.g.get(f"{k}.b_write"), "0", f"{k}: allocated space takes writes" + describe(self.res))
            self.assertEqual(self.g.get(f"{k}.b_readback"), "same", k + describe(self.res))

    def test_the_vmm_lives_counts_the_errors_and_powers_off(self) -> None:
        disks = disks_by_id(vm_info(self.res, "full"))
        self.assertGreater(disks["vhdx"]["errors"] + disks["raw"]["errors"], 0, describe(self.res))
        self.assertEqual(self.h.get("full.rc"), API_POWER_OFF, f"enlighten said:\n{vmm_log(self.res, 'full')[-2000:]}"
                         + describe(self.res))

    def test_the_full_vhdx_is_consistent_and_holds_the_last_flushed_writes(self) -> None:
        self.assertEqual(self.h.get("host.check"), "0", "image check" + describe(self.res, 4000))
        self.assertEqual(self.h.get("host.convert"), "0", describe(self.res))
        self.assertEqual(self.h.get("host.vhdx_b"), "same", describe(self.res))
        self.assertEqual(self.h.get("host.raw_b"), "same", describe(self.res))


class MultiChannelTests(StorageCase):

    def test_four_vcpus_open_sub_channels_and_io_flows_on_every_channel(self) -> None:
        res = MULTICHANNEL.result(self, "channels")
        console = self.booted(res, "mc")
        g = kv(console)
        self.assertEqual(g.get("cpus"), "4", describe(res))
        channels = int(g.get("channels", "0"))
        self.assertEqual(channels, 4, "the guest opened sub-channels: one channel per vCPU" + describe(res))
        self.assertEqual(g.get("fio_rc"), "0", describe(res))
        fio = [line.split(";") for line in tagged(console, "FIO") if line.startswith("3;")]
        self.assertEqual(len(fio), 1, describe(res))
        self.assertGreater(int(fio[0][5]) + int(fio[0][46]), 0, "fio moved data" + describe(res))  # read + write KiB
        info = vm_info(res, "mc")
        ctrl = disks_by_id(info)["mc"]["controller"]
        chans = [c for c in info["storage_channels"] if c["controller"] == ctrl]
        self.assertEqual(len(chans), channels, "the API and the guest count the same channels" + describe(res))
        self.assertEqual(sorted(c["index"] for c in chans), list(range(channels)), describe(res))
        for c in chans:
            self.assertGreater(c["requests"], 0, f"channel {c['index']} carried I/O" + describe(res))
        vps = {int(x.split(":")[1]) for line in tagged(console, "VPMAP") for x in line.split()}
        self.assertEqual({c["target_vp"] for c in chans}, vps, "target VPs as the guest mapped them" + describe(res))
        self.assertEqual(results(res).get("mc.rc"), API_POWER_OFF, describe(res))
        self.assertNoStorvscErrors(res, console)


class HotplugTests(StorageCase):

    def test_hot_add_and_hot_remove_through_the_api(self) -> None:
        res = self.run_of("hotplug")
        console = self.booted(res, "hot")
        g, h = kv(console), results(res)
        self.assertEqual(h.get("host.add"), "ok", describe(res))
        added = g.get("added", "")
        self.assertRegex(added, r"^sd[a-z]+$", "the new disk appeared without a rescan in the guest" + describe(res))
        rows = {r["NAME"]: r for r in lsblk_rows(console, "LSBLK-ADDED")}
        self.assertEqual(len(rows), 2, describe(res))
        self.assertEqual(int(rows[added]["SIZE"]), 40 * MiB, describe(res))
        self.assertEqual(g.get("hot_serial"), "HOT-1", "VPD page 0x80 carries the serial" + describe(res))
        self.assertEqual(g.get("hot_write"), "ok", describe(res))
        self.assertEqual(h.get("host.hot"), "same", "hot.img holds what the guest wrote" + describe(res))
        d = disks_by_id(vm_info(res, "added"))
        self.assertEqual(sorted(d), ["base", "hot"], describe(res))
        self.assertEqual(d["hot"]["size_bytes"], 40 * MiB, describe(res))
        self.assertEqual(d["hot"]["controller"], d["base"]["controller"], describe(res))
        self.assertEqual(int(rows[added]["HCTL"].split(":")[3]), d["hot"]["lun"], describe(res))
        self.assertEqual(h.get("host.remove"), "ok", describe(res))
        self.assertEqual(g.get("removed"), added, "the removed disk went away in the guest" + describe(res))
        self.assertEqual([r["NAME"] for r in lsblk_rows(console, "LSBLK-REMOVED")], [n for n in rows if n != added],
                         "the other disk stays" + describe(res))
        self.assertEqual(sorted(disks_by_id(vm_info(res, "removed"))), ["base"], describe(res))
        self.assertEqual(g.get("base_write"), "ok", describe(res))
        self.assertEqual(h.get("host.base"), "same", describe(res))
        self.assertEqual(h.get("hot.rc"), API_POWER_OFF, describe(res))
        self.assertNoStorvscErrors(res, console)


class TrimTests(StorageCase):

    def test_fstrim_frees_blocks_of_the_host_file(self) -> None:
        res = self.run_of("trim")
        console = self.booted(res, "trim")
        g, h = kv(console), results(res)
        self.assertEqual(h.get("host.disks_fs"), "tmpfs", "the image lives where holes can be punched" + describe(res))
        self.assertGreater(int(g.get("discard_max_bytes", "0")), 0, "the disk advertises discard" + describe(res))
        self.assertEqual(g.get("provisioning_mode"), "unmap", describe(res))
        self.assertEqual((g.get("mounted"), g.get("fill")), ("ok", "ok"), describe(res))
        self.assertEqual(g.get("fstrim_rc"), "0", describe(res))
        m = re.search(r"\((\d+) bytes\) trimmed", "\n".join(tagged(console, "FSTRIM")))
        self.assertTrue(m and int(m.group(1)) >= 64 * MiB, "fstrim trimmed at least the deleted file" + describe(res))
        filled, trimmed = int(h.get("host.filled", "0")), int(h.get("host.trimmed", "-1"))
        self.assertGreaterEqual(filled, 64 * MiB, "the 64 MiB file was allocated in the host file" + describe(res))
        self.assertLessEqual(trimmed, filled - 56 * MiB, "UNMAP punched holes in the host file" + describe(res))
        d = disks_by_id(vm_info(res, "trim"))["trim"]
        self.assertGreater(d["unmaps"], 0, describe(res))
        self.assertEqual(d["errors"], 0, describe(res))
        self.assertEqual(h.get("trim.rc"), API_POWER_OFF, describe(res))
        self.assertNoStorvscErrors(res, console)


class HostileGuestTests(StorageCase):
    """The "hostile" run: what a guest's root user can send through SG_IO and the SCSI scan
    interface. Malformed VMBus packets (bad SRB lengths, buffers outside guest RAM, wrong
    packet types, requests after close) cannot come from user space; tests/unit covers them."""

    def setUp(self) -> None:
        self.res = self.run_of("hostile")
        self.console = self.booted(self.res, "hostile")
        self.g, self.h = kv(self.console), results(self.res)

    def sense(self, name: str) -> str:
        return "\n".join(tagged(self.console, f"SG-{name}"))

    def test_bogus_cdbs_each_get_check_condition_with_illegal_request(self) -> None:
        expected = {
            "badop": r"Invalid command operation code",
            "pastend": r"Logical block address out of range",
            "shortbuf_read": r"Invalid field in cdb",
            "shortbuf_write": r"Invalid field in cdb",
            "huge": r"Logical block address out of range",
            "wrap": r"Logical block address out of range",
            "read6": r"Logical block address out of range",
        }
        for name, asc in expected.items():
            out = self.sense(name)
            self.assertNotEqual(self.g.get(f"sg_{name}", "0"), "0", f"{name}: sg_raw failed" + describe(self.res))
            self.assertRegex(out, r"Check Condition", f"{name}" + describe(self.res))
            self.assertRegex(out, r"Sense key: Illegal Request", f"{name}" + describe(self.res))
            self.assertRegex(out, re.compile(asc, re.I), f"{name}" + describe(self.res))

    def test_scans_of_absent_targets_and_luns_add_no_disk(self) -> None:
        g = self.g
        self.assertEqual((g.get("scan_target_rc"), g.get("scan_lun_rc"), g.get("scan_all_rc")), ("0", "0", "0"),
                         describe(self.res))
        self.assertEqual(g.get("disks_after_scans"), g.get("disks_before_scans"), describe(self.res))
        self.assertEqual(len(lsblk_rows(self.console, "LSBLK-AFTER")), 2, describe(self.res))

    def test_the_disks_and_the_vmm_keep_working(self) -> None:
        g, h, res = self.g, self.h, self.res
        self.assertEqual(g.get("before_write"), "ok", describe(res))
        self.assertEqual(g.get("after_read"), "same", "the data before the bogus commands is intact" + describe(res))
        self.assertEqual(g.get("after_write"), "ok", describe(res))
        self.assertEqual((g.get("other_write"), g.get("other_read")), ("ok", "same"), "the other disk works" + describe(res))
        self.assertEqual(g.get("state"), "running", "the SCSI device was not offlined" + describe(res))
        self.assertEqual(h.get("host.good"), "same", "the short WRITE changed nothing in the file" + describe(res))
        self.assertEqual(h.get("host.after"), "same", describe(res))
        self.assertEqual(h.get("host.other"), "same", describe(res))
        self.assertEqual(h.get("host.h_size"), str(64 * MiB), "nothing was written past the end" + describe(res))
        self.assertEqual(h.get("hostile.rc"), API_POWER_OFF, "the VM ran until the API powered it off" + describe(res))
        disks = disks_by_id(vm_info(res, "hostile"))
        self.assertGreaterEqual(disks["h"]["errors"], 1, describe(res))
        self.assertEqual(disks["o"]["errors"], 0, describe(res))
        self.assertNotRegex(self.console, r"Device offlined|blocked for more than|Kernel panic", describe(res))
        self.assertCleanVmmLog(res, "hostile")


if __name__ == "__main__":
    unittest.main(verbosity=2)


class VhdxTests(StorageCase):
    """The "vhdx" run: VHDX disks made by `enlighten image` (dynamic, fixed, dynamic with 4 KiB
    sectors and 1 MiB blocks, a chain of three, two for fstrim) in one
    guest boot; then the host's checks, conversions and merge; then three SIGKILLs in a
    write+fsync storm on one image."""

    res: RunResult
    console: str
    g: dict[str, str]
    h: dict[str, str]

    @classmethod
    def setUpClass(cls) -> None:
        cls.res = None  # type: ignore[assignment]

    def setUp(self) -> None:
        if VhdxTests.res is None:
            VhdxTests.res = self.run_of("vhdx")
            VhdxTests.console = self.booted(VhdxTests.res, "vhdx")
            VhdxTests.g, VhdxTests.h = kv(VhdxTests.console), results(VhdxTests.res)

    def test_the_image_tool_made_every_kind_of_vhdx(self) -> None:
        for k in ("create_dyn", "create_fixed", "create_4k", "convert_base", "chain"):
            self.assertEqual(self.h.get(f"host.{k}"), "ok", k + describe(self.res))

    def test_dynamic_fixed_and_4k_vhdx_disks_hold_what_the_guest_wrote(self) -> None:
        for mib in (48, 40, 36):
            self.assertEqual(self.g.get(f"vwrite.{mib}"), "ok", describe(self.res))
            self.assertEqual(self.g.get(f"vread.{mib}"), "same", describe(self.res))
        self.assertEqual(self.g.get("lbs.48"), "512", describe(self.res))
        self.assertEqual(self.g.get("lbs.40"), "512", describe(self.res))
        self.assertEqual(self.g.get("lbs.36"), "4096", describe(self.res))
        rows = {int(r["SIZE"]) // MiB for r in lsblk_rows(self.console, "LSBLK")}
        self.assertEqual(rows, {48, 40, 36, 44, 64, 66}, "every VHDX with its exact size" + describe(self.res))
        # the host's view: converted to raw by `enlighten image convert`
        for d, mib in (("dyn", 48), ("fixed", 40), ("s4k", 36)):
            self.assertEqual(self.h.get(f"host.{d}"), "same", d + describe(self.res))
            self.assertEqual(self.h.get(f"host.size_{d}"), str(mib * MiB), d + describe(self.res))

    def test_qemu_img_finds_our_vhdx_files_clean_and_reads_the_same_data(self) -> None:
        for d in ("dyn", "fixed"):  # not s4k: QEMU 7.2 opens 512-byte logical sectors only
            self.assertEqual(self.h.get(f"host.qcheck_{d}"), "0",
                             d + "\n" + "\n".join(tagged(self.res.output, f"QCHECK-{d}")) + describe(self.res))
            self.assertEqual(self.h.get(f"host.qemu_{d}"), "same", d + describe(self.res))
        self.assertEqual(self.h.get("host.storm_repair"), "0", "\n".join(tagged(self.res.output, "STORM-REPAIR")) + describe(self.res))
        self.assertEqual(self.h.get("host.storm_qcheck"), "0",
                         "the killed image, once replayed\n" + "\n".join(tagged(self.res.output, "STORM-QCHECK")) + describe(self.res))
        self.assertEqual(self.h.get("host.storm_qemu"), "same", describe(self.res))
        self.assertEqual(self.res_rc(), API_POWER_OFF, describe(self.res))
        self.assertNoStorvscErrors(self.res, self.console)

    def res_rc(self) -> str | None:
        return self.h.get("vhdx.rc")

    def test_every_image_checks_clean_after_the_guest_wrote_to_it(self) -> None:
        for f in ("dyn", "fixed", "s4k", "top", "trim64", "trim66"):
            self.assertEqual(self.h.get(f"host.check_{f}"), "0", f + "\n" + "\n".join(tagged(self.res.output, f"CHECK-{f}"))
                             + describe(self.res))

    def test_a_chain_of_three_reads_through_and_writes_land_in_the_child(self) -> None:
        self.assertEqual(self.g.get("chain_read"), "same", "the base's data through two differencing disks" + describe(self.res))
        self.assertEqual(self.g.get("chain_write"), "ok", describe(self.res))
        self.assertEqual(self.h.get("host.top"), "same", "the chain as a whole holds base + the guest's write" + describe(self.res))
        self.assertEqual(self.h.get("host.base_unchanged"), "yes", describe(self.res))
        self.assertEqual(self.h.get("host.mid_before_merge"), "base", "the write went to the child, not the middle" + describe(self.res))

    def test_merge_folds_the_child_into_its_parent(self) -> None:
        self.assertEqual(self.h.get("host.merge"), "0", "\n".join(tagged(self.res.output, "MERGE")) + describe(self.res))
        self.assertEqual(self.h.get("host.mid_after_merge"), "same", describe(self.res))

    def test_fstrim_shrinks_the_vhdx(self) -> None:
        self.assertEqual(self.g.get("umount"), "ok", describe(self.res))
        m = re.search(r"\((\d+) bytes\) trimmed", "\n".join(tagged(self.console, "FSTRIM")))
        self.assertTrue(m and int(m.group(1)) >= 16 * MiB, "fstrim trimmed at least the deleted file" + describe(self.res))
        kept, trimmed = int(self.h.get("host.alloc_trim64", "0")), int(self.h.get("host.alloc_trim66", "-1"))
        self.assertGreaterEqual(kept, 16 * MiB, "the untrimmed image holds the deleted file's blocks" + describe(self.res))
        self.assertLessEqual(trimmed, kept - 8 * MiB, "UNMAP freed space in the trimmed image" + describe(self.res))

    def test_sigkill_in_a_write_storm_leaves_a_consistent_image_with_every_fsynced_write(self) -> None:
        for k in (1, 2, 3):
            booted = section(self.res, f"storm{k}")
            self.assertIn("ENLIGHTEN-INIT", booted, f"round {k}: the VM opened the killed image" + describe(self.res))
            self.assertEqual(self.h.get(f"host.storm{k}.check"), "0",
                             f"round {k}: `enlighten image check` after the kill\n"
                             + "\n".join(tagged(self.res.output, "STORM-CHECK")) + describe(self.res))
            self.assertRegex(self.h.get(f"host.storm{k}.fsynced", ""), r"^\d+$", describe(self.res))
            self.assertEqual(self.h.get(f"host.storm{k}.lost"), "0",
                             f"round {k}: every write fsynced so far, in this round and the earlier ones" + describe(self.res))
            self.assertEqual(self.h.get(f"storm{k}.rc"), "137", f"round {k} was killed (SIGKILL)" + describe(self.res))
