"""End-to-end test of the bootable Debian 12 root disk (tools/enlighten_tools/debian_disk.py):
Debian's kernel and Debian's initramfs mount root=/dev/sda1 from a dynamic VHDX on the
synthetic SCSI controller, systemd reaches multi-user.target, udev starts hv-kvp-daemon
when hv_utils makes /dev/vmbus/hv_kvp, the daemon's data reaches the management API, file
copy (`enlighten remote copy-file`, served by Debian's hv-fcopy-daemon, which udev starts
when /dev/vmbus/hv_fcopy appears) puts a 100 MiB file into the guest intact and refuses
what the guest's daemon refuses, and `enlighten remote shutdown` makes systemd power the
guest off (exit status 0).

One session ("debian"), one scenario. The image is built (or taken from the cache) when
the session runs; the guest writes to a differencing VHDX whose parent is the cached disk,
so the cache stays as built. In the test host the disk is carried in its initramfs
(about 300 MiB: see tools/README.md). The scenario types commands on the guest's root
shell (autologin on ttyS0): the console is `--serial stdio`, its input a FIFO."""

from __future__ import annotations

import json
import re
import sys
import unittest
from pathlib import Path

from harness import RunResult, Session, describe, results

from enlighten_tools import debian_disk

DEBIAN = Session("debian")

_disk: debian_disk.DebianDisk | None = None


def _image() -> debian_disk.DebianDisk:
    global _disk
    if _disk is None:
        _disk = debian_disk.build()
    return _disk


SCRIPT = r"""
DISK=$WORK/debian.vhdx
"$ENL" image create "$DISK" --format vhdx --parent "$DEBIAN_VHDX" >"$WORK/create.log" 2>&1 \
    && echo "RESULT child=ok" || { echo "RESULT child=failed"; cat "$WORK/create.log"; exit 1; }
# The console's input: a FIFO that this shell holds open (fd 3), so the VMM never reads its end.
CONSOLE_IN=$WORK/console.in
mkfifo "$CONSOLE_IN" && exec 3<>"$CONSOLE_IN"
t0=$(now)
"$ENL" run --kernel "$KERNEL" --initrd "$DEBIAN_INITRD" --memory 512M --cpus "$CPUS" \
    --serial stdio --api-socket "$API" --on-reboot exit --log-level info \
    --disk "path=$DISK,format=vhdx" \
    --cmdline "root=/dev/sda1 console=ttyS0 quiet panic=-1" <"$CONSOLE_IN" >"$SERIAL" 2>"$WORK/vmm.log" 3>&- &
VM_PID=$!
# guest CMD: types CMD on the root shell. A command that reports prints a marker it builds
# from two strings, so that the terminal's echo of what was typed never matches.
guest() { printf '%s\n' "$1" >&3; }
if ! wait_serial ENLIGHTEN-DEBIAN-READY 300; then
    # what systemd still waits for, asked on the console's shell; then the report itself, run
    # by that shell (its output is the shell's), so that a lost report does not end the run
    echo "RESULT report_lost=yes"
    guest 'systemctl list-jobs --no-pager --no-legend | sed "s/^/ENLIGHTEN""-JOB /"; systemctl list-units --state=activating,failed --no-pager --no-legend | sed "s/^/ENLIGHTEN""-UNIT /"'
    guest 'journalctl -b -u enlighten-boot-report --no-pager -o cat | sed "s/^/ENLIGHTEN""-REPORT-LOG /"; /usr/local/sbin/enlighten-boot-report'
    wait_serial ENLIGHTEN-DEBIAN-READY 230 || { dump_logs; exit 1; }
fi
echo "RESULT boot_seconds=$(awk "BEGIN { print $(now) - $t0 }")"
wait_api 60 FullyQualifiedDomainName kvp-list auto
echo "--- auto pool ---"
api kvp-list auto
echo "--- end auto pool ---"
api heartbeat

# ---- file copy
# try NAME COMMAND...: one RESULT line with what the API command printed, and its exit status
try() { name=$1; shift; out=$(api "$@" 2>&1); rc=$?; echo "RESULT $name=$(printf '%s' "$out" | tr '\n' ' ') rc=$rc"; }
fc_t0=$(now)
n=0
until grep -q SHELL-UP "$SERIAL"; do
    n=$((n + 1)); [ $n -gt 40 ] && { echo "SCENARIO-TIMEOUT waiting for the guest's shell"; break; }
    guest 'echo SHELL""-UP'
    sleep 3
done
guest 'echo "FCOPY""-DAEMON $(systemctl is-active hv-fcopy-daemon.service)"'
dd if=/dev/urandom of="$WORK/big.bin" bs=1048576 count=100 2>/dev/null
echo "RESULT fcopy_host_sha=$(sha256sum "$WORK/big.bin" | cut -d' ' -f1)"
echo "small file" > "$WORK/small.txt"
# 100 MiB in the background; meanwhile its progress, and a second copy is refused.
api copy-file "$WORK/big.bin" /root/big.bin >"$WORK/copy.json" 2>"$WORK/copy.err" &
COPY_PID=$!
wait_api 60 '"running"' copy-file-status
try fcopy_busy copy-file "$WORK/small.txt" /root/other.txt
wait_api 60 '"bytes_written": [1-9]' copy-file-status
echo "RESULT fcopy_progress=$(api copy-file-status | tr '\n' ' ')"
wait $COPY_PID
echo "RESULT fcopy_rc=$?"
echo "RESULT fcopy_result=$(tr '\n' ' ' < "$WORK/copy.json")"
echo "RESULT fcopy_error=$(cat "$WORK/copy.err")"
# The guest's daemon refuses an existing file without --overwrite, and a missing directory
# without --create-path.
try fcopy_exists copy-file "$WORK/small.txt" /root/big.bin
try fcopy_nodir copy-file "$WORK/small.txt" /root/new/dir/small.txt
try fcopy_create_path copy-file "$WORK/small.txt" /root/new/dir/small.txt --create-path
# What the guest has (sha256 of 100 MiB takes a while in the test host).
guest 'echo "FCOPY""-GUEST sha=$(sha256sum /root/big.bin | cut -d" " -f1) size=$(stat -c %s /root/big.bin) small=$(cat /root/new/dir/small.txt | tr " " _) other=$(test -e /root/other.txt && echo yes || echo no)"'
wait_serial FCOPY-GUEST 300
echo "RESULT fcopy_seconds=$(awk "BEGIN { print $(now) - $fc_t0 }")"

# ---- production checkpoint (VSS): a data disk hot-added and written to in a loop
ck_t0=$(now)
api copy-file "$CKPT_SH" /root/ckpt.sh --overwrite >/dev/null
"$ENL" image create "$WORK/data.vhdx" --format vhdx --size 64M >/dev/null
try ck_add add-disk "$WORK/data.vhdx" --id data --format vhdx
guest 'sh /root/ckpt.sh mount'
wait_serial "CKPT-DONE mount" 120
sleep 3
try ck_take checkpoint ck1
try ck_dup checkpoint ck1
try ck_list checkpoints
echo "RESULT ck_info_paths=$(api info | grep -o '"path": "[^"]*"' | tr '\n' ' ')"
"$ENL" image check "$WORK/data.vhdx" >/dev/null 2>&1; echo "RESULT ck_parent_check=$?"
echo "RESULT ck_child_info=$("$ENL" image info "$WORK/data_ck1.avhdx" --json | tr '\n' ' ')"
# The parent, as of the freeze, attached read-only: the guest checks its file system.
try ck_ro add-disk "$WORK/data.vhdx" --id parent --format vhdx --readonly
guest 'sh /root/ckpt.sh parent'
wait_serial "CKPT-DONE parent" 180
guest 'sh /root/ckpt.sh live'
wait_serial "CKPT-DONE live" 60
try ck_rm remove-disk parent
try ck_merge checkpoint-merge
try ck_list_after checkpoints
echo "RESULT ck_avhdx_left=$(ls "$WORK" | grep -c avhdx)"
echo "RESULT ck_data_info=$("$ENL" image info "$WORK/data.vhdx" --json | tr '\n' ' ')"
# Without the guest's VSS daemon: refused, unless crash consistency is asked for.
guest 'sh /root/ckpt.sh stop-vssd'
wait_serial "CKPT-DONE stop-vssd" 60
try ck_novss checkpoint ck2
try ck_crash checkpoint ck2 --crash
try ck_merge2 checkpoint-merge
sleep 1
guest 'sh /root/ckpt.sh final'
wait_serial "CKPT-DONE final" 120
echo "RESULT ck_seconds=$(awk "BEGIN { print $(now) - $ck_t0 }")"
exec 3>&-
t1=$(now)
api shutdown --timeout 60 && echo "RESULT request=accepted"
wait $VM_PID
echo "RESULT rc=$?"
echo "RESULT shutdown_seconds=$(awk "BEGIN { print $(now) - $t1 }")"
"$ENL" image check "$DISK" >/dev/null 2>&1; echo "RESULT child_check=$?"
"$ENL" image check "$WORK/data.vhdx" >/dev/null 2>&1; echo "RESULT ck_data_check=$?"
dump_logs
"""
DEBIAN.scenario("boot", SCRIPT, timeout=1200,
                files={"DEBIAN_VHDX": lambda: _image().vhdx, "DEBIAN_INITRD": lambda: _image().initrd,
                       "CKPT_SH": Path(__file__).parent / "helpers" / "checkpoint_guest.sh"})


class DebianDiskTests(unittest.TestCase):
    res: RunResult
    r: dict[str, str]

    def setUp(self) -> None:
        self.res = DEBIAN.result(self, "boot")
        self.r = results(self.res)

    def why(self) -> str:
        return describe(self.res, 12000)

    def ready(self) -> dict[str, str]:
        # Not anchored: the root autologin shell shares ttyS0, so its prompt may come first on the line.
        m = re.search(r"ENLIGHTEN-DEBIAN-READY (uptime=.*)$", self.res.output, re.M)
        self.assertIsNotNone(m, "the guest never reported the end of its boot" + self.why())
        return dict(kv.split("=", 1) for kv in m.group(1).split() if "=" in kv)

    def auto_pool(self) -> dict[str, str]:
        out = self.res.output
        if "--- auto pool ---" not in out:
            self.fail("no auto pool listing" + self.why())
        text = out[out.index("--- auto pool ---") + 17:out.index("--- end auto pool ---")]
        return {e["key"]: e["value"] for e in json.loads(text)["entries"]}

    def test_systemd_reaches_multi_user_and_is_running(self) -> None:
        ready = self.ready()
        self.assertEqual(ready.get("state"), "running",
                         "systemctl is-system-running after the boot" + self.why())
        self.assertNotIn("ENLIGHTEN-FAILED-UNIT", self.res.output, self.why())
        if self.r.get("report_lost"):
            print("[the boot report service's output was lost; the console's shell ran the report] ", end="",
                  file=sys.stderr, flush=True)
        print(f"[boot to multi-user: {self.r.get('boot_seconds')} s in the {self.res.runner}, guest uptime "
              f"{ready.get('uptime')} s] ", end="", file=sys.stderr, flush=True)

    def test_hv_kvp_daemon_runs_as_a_service(self) -> None:
        self.assertEqual(self.ready().get("kvp"), "active",
                         "systemctl is-active hv-kvp-daemon.service" + self.why())

    def test_kvp_daemon_data_reaches_the_api(self) -> None:
        pool = self.auto_pool()
        self.assertEqual(pool.get("FullyQualifiedDomainName"), debian_disk.HOSTNAME, self.why())
        self.assertIn("Debian", pool.get("OSName", ""), self.why())
        self.assertEqual(pool.get("OSMajorVersion"), "12", "VERSION_ID of /etc/os-release" + self.why())
        self.assertIn(_image().kernel_version, pool.values(), "the kernel release (OSBuildNumber)" + self.why())

    def fcopy_guest(self) -> dict[str, str]:
        m = re.search(r"FCOPY-GUEST (sha=.*?)\r?$", self.res.output, re.M)
        self.assertIsNotNone(m, "the guest's shell never reported the copied files" + self.why())
        return dict(kv.split("=", 1) for kv in m.group(1).split() if "=" in kv)

    def test_hv_fcopy_daemon_runs_as_a_service(self) -> None:
        m = re.search(r"FCOPY-DAEMON (\S+)", self.res.output)
        self.assertIsNotNone(m, "no answer from the guest's shell" + self.why())
        self.assertEqual(m.group(1), "active", "systemctl is-active hv-fcopy-daemon.service" + self.why())

    def test_file_copy_of_100_mib_arrives_intact(self) -> None:
        r = self.r
        self.assertEqual(r.get("fcopy_rc"), "0", f"enlighten remote copy-file: {r.get('fcopy_error')}" + self.why())
        result = json.loads(r.get("fcopy_result") or "{}")
        self.assertEqual(result.get("bytes"), 100 << 20, self.why())
        guest = self.fcopy_guest()
        self.assertEqual(guest.get("size"), str(100 << 20), self.why())
        self.assertEqual(guest.get("sha"), r.get("fcopy_host_sha"), "sha256 in the guest and in the host" + self.why())
        print(f"[file copy: 100 MiB at {result.get('mib_per_s', 0):.1f} MiB/s ({result.get('elapsed_ms')} ms); "
              f"the file copy part took {r.get('fcopy_seconds')} s] ", end="", file=sys.stderr, flush=True)

    def test_file_copy_shows_progress_and_runs_one_at_a_time(self) -> None:
        r = self.r
        progress = json.loads(r.get("fcopy_progress", "{}") or "{}")
        self.assertEqual(progress.get("state"), "running", self.why())
        self.assertEqual(progress.get("bytes_total"), 100 << 20, self.why())
        self.assertGreater(progress.get("bytes_written", 0), 0, self.why())
        self.assertLess(progress.get("bytes_written", 0), 100 << 20, self.why())
        self.assertIn("a file copy is running already", r.get("fcopy_busy", ""), self.why())
        self.assertTrue(r.get("fcopy_busy", "").endswith("rc=1"), self.why())
        self.assertEqual(self.fcopy_guest().get("other"), "no", "the refused copy made no file" + self.why())

    def test_file_copy_refuses_an_existing_file_without_overwrite(self) -> None:
        r = self.r.get("fcopy_exists", "")
        self.assertTrue(r.endswith("rc=1"), self.why())
        self.assertIn("/root/big.bin exists in the guest and overwrite is off", r, self.why())
        self.assertIn("HV_ERROR_ALREADY_EXISTS (0x80070050)", r, self.why())
        # and the file is the 100 MiB one still
        self.assertEqual(self.fcopy_guest().get("sha"), self.r.get("fcopy_host_sha"), self.why())

    def test_file_copy_needs_create_path_for_a_missing_directory(self) -> None:
        r = self.r
        self.assertTrue(r.get("fcopy_nodir", "").endswith("rc=1"), self.why())
        self.assertIn("HV_E_FAIL (0x80004005)", r.get("fcopy_nodir", ""), self.why())
        self.assertIn("/root/new/dir/ does not exist (create_path is off)", r.get("fcopy_nodir", ""), self.why())
        self.assertTrue(r.get("fcopy_create_path", "").endswith("rc=0"), self.why())
        self.assertEqual(self.fcopy_guest().get("small"), "small_file", self.why())

    # ---- production checkpoints
    def api_json(self, name: str) -> tuple[dict, str]:
        """A `try` result: the API's JSON answer and the exit status."""
        m = re.fullmatch(r"(.*) rc=(\d+)", self.r.get(name, ""))
        self.assertIsNotNone(m, f"no result {name}" + self.why())
        try:
            return json.loads(m.group(1)), m.group(2)
        except json.JSONDecodeError:
            self.fail(f"{name}: not JSON: {m.group(1)} (rc={m.group(2)})" + self.why())

    def marker(self, name: str) -> dict[str, str]:
        m = re.search(rf"{name} (.*?)\r?$", self.res.output, re.M)
        self.assertIsNotNone(m, f"the guest never printed {name}" + self.why())
        return dict(kv.split("=", 1) for kv in m.group(1).split() if "=" in kv)

    def test_checkpoint_freezes_the_guest_and_puts_every_disk_on_a_new_image(self) -> None:
        self.assertEqual(self.marker("CKPT-MOUNTED"), {"rc": "0", "vssd": "active"}, self.why())
        take, rc = self.api_json("ck_take")
        self.assertEqual(rc, "0", self.why())
        self.assertEqual((take["name"], take["consistency"]), ("ck1", "application"), self.why())
        self.assertGreater(take["frozen_ms"], 0, self.why())
        self.assertIsNone(take["warning"], self.why())
        disks = {d["id"]: d for d in take["disks"]}
        self.assertEqual(len(disks), 2, "the root disk and the data disk" + self.why())
        self.assertTrue(disks["data"]["parent"].endswith("/data.vhdx"), self.why())
        self.assertTrue(disks["data"]["image"].endswith("/data_ck1.avhdx"), self.why())
        self.assertIn("data_ck1.avhdx", self.r.get("ck_info_paths", ""), "vm.info shows the new image" + self.why())
        chain = [c["path"] for c in json.loads(self.r["ck_child_info"])["chain"]]
        self.assertEqual([p.rsplit("/", 1)[1] for p in chain], ["data_ck1.avhdx", "data.vhdx"], self.why())
        listed, rc = self.api_json("ck_list")
        self.assertEqual([c["name"] for c in listed["checkpoints"]], ["ck1"], self.why())
        self.assertTrue(self.r.get("ck_dup", "").endswith("rc=1"), self.why())
        self.assertIn("there is a checkpoint 'ck1' already", self.r.get("ck_dup", ""), self.why())
        # The guest's own log: its VSS daemon froze and thawed.
        journal = re.findall(r"CKPT-JOURNAL (.*?)\r?$", self.res.output, re.M)
        # (hv_vss_daemon's syslog lines: "Hyper-V VSS: VSS: op=FREEZE: succeeded")
        for line in ("VSS: op=FREEZE: succeeded", "VSS: op=THAW: succeeded"):
            self.assertTrue(any(line in j for j in journal), f"{line!r} not in the guest's journal: {journal}" + self.why())
        print(f"[checkpoint: frozen {take['frozen_ms']} ms, disk I/O held {take['paused_ms']} ms; the checkpoint part "
              f"took {self.r.get('ck_seconds')} s] ", end="", file=sys.stderr, flush=True)

    def test_checkpoint_parent_holds_a_clean_file_system_as_of_the_freeze(self) -> None:
        self.assertEqual(self.r.get("ck_parent_check"), "0", "enlighten image check of the parent" + self.why())
        parent = self.marker("CKPT-PARENT")
        self.assertEqual(parent.get("fsck"), "0", "e2fsck -fn of the parent, in the guest" + self.why())
        self.assertGreater(int(parent.get("lines", "0")), 0, self.why())
        self.assertEqual(parent.get("seq"), "ok", "the file as of the freeze: whole lines, none lost" + self.why())

    def test_guest_keeps_writing_across_the_checkpoint(self) -> None:
        parent = int(self.marker("CKPT-PARENT").get("lines", "0"))
        live = self.marker("CKPT-LIVE")
        self.assertEqual((live.get("seq"), live.get("prefix")), ("ok", "yes"), self.why())
        self.assertGreater(int(live.get("lines", "0")), parent, "lines written after the checkpoint" + self.why())
        final = self.marker("CKPT-FINAL")
        self.assertEqual((final.get("seq"), final.get("parent_prefix")), ("ok", "yes"), self.why())
        self.assertGreater(int(final.get("lines", "0")), int(live.get("lines", "0")),
                           "lines written across the merge" + self.why())

    def test_checkpoint_merge_brings_the_chain_back_to_one_image(self) -> None:
        merged, rc = self.api_json("ck_merge")
        self.assertEqual((rc, merged["name"]), ("0", "ck1"), self.why())
        after, _ = self.api_json("ck_list_after")
        self.assertEqual(after["checkpoints"], [], self.why())
        self.assertEqual(self.r.get("ck_avhdx_left"), "0", "the differencing images are gone" + self.why())
        info = json.loads(self.r["ck_data_info"])
        self.assertEqual(len(info["chain"]), 1, self.why())
        self.assertEqual(self.r.get("ck_data_check"), "0", "the data disk is clean after the shutdown" + self.why())

    def test_checkpoint_without_the_guest_vss_daemon_needs_crash_consistency(self) -> None:
        self.assertIn(self.marker_text("CKPT-STOP-VSSD"), ("inactive", "failed"), self.why())
        novss = self.r.get("ck_novss", "")
        self.assertTrue(novss.endswith("rc=1"), self.why())
        self.assertIn("hv_vss_daemon", novss, self.why())
        self.assertIn("--crash", novss, "the error says how to take one anyway" + self.why())
        crash, rc = self.api_json("ck_crash")
        self.assertEqual((rc, crash["consistency"], crash["frozen_ms"]), ("0", "crash", 0), self.why())
        merged, rc = self.api_json("ck_merge2")
        self.assertEqual((rc, merged["name"]), ("0", "ck2"), self.why())

    def marker_text(self, name: str) -> str:
        m = re.search(rf"{name} (\S+)", self.res.output, re.M)
        self.assertIsNotNone(m, f"the guest never printed {name}" + self.why())
        return m.group(1)

    def test_shutdown_through_the_api_powers_off_cleanly(self) -> None:
        r = self.r
        self.assertEqual(r.get("request"), "accepted", self.why())
        self.assertEqual(r.get("rc"), "0", "the VMM should exit 0 after the guest powered off" + self.why())
        self.assertIn("reboot: Power down", self.res.output, self.why())
        self.assertEqual(r.get("child_check"), "0", "the differencing disk is clean after the shutdown" + self.why())
        print(f"[shutdown {r.get('shutdown_seconds')} s] ", end="", file=sys.stderr, flush=True)


if __name__ == "__main__":
    unittest.main()
