"""Command line: python3 -m enlighten_tools <command> ... (or tools/enlighten-tools)."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

from . import debian, debian_disk, guest_image, hostile, testhost, userland
from .common import ToolError


def _pair(text: str) -> tuple[str, str]:
    if ":" not in text:
        raise argparse.ArgumentTypeError(f"expected SRC:DST, got {text!r}")
    src, dst = text.rsplit(":", 1)
    if not dst.startswith("/"):
        raise argparse.ArgumentTypeError(f"DST must be an absolute path: {text!r}")
    return src, dst


def _strip_dashdash(rest: list[str]) -> list[str]:
    return rest[1:] if rest and rest[0] == "--" else rest


def cmd_fetch(a: argparse.Namespace) -> int:
    for name, root in debian.fetch_all().items():
        print(f"{name}\t{root}")
    for name in userland.packages():
        print(f"{name}\t{debian.package_tree(name)}")
    return 0


def cmd_guest_image(a: argparse.Namespace) -> int:
    base = guest_image.build(force=a.force)
    kernel, initrd = base.kernel, base.initrd
    if a.job or a.add or a.tools or a.net:
        out = Path(a.out) / "initrd.img" if a.out else None
        initrd = guest_image.make_run_initrd(job=Path(a.job) if a.job else None,
                                             files=a.add, out=out, base=base, tools=a.tools,
                                             net=a.net)
    if a.out:
        out_dir = Path(a.out)
        out_dir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(kernel, out_dir / "bzImage")
        kernel = out_dir / "bzImage"
        if initrd != out_dir / "initrd.img":
            shutil.copyfile(initrd, out_dir / "initrd.img")
            initrd = out_dir / "initrd.img"
    print(kernel)
    print(initrd)
    return 0


def cmd_debian_disk(a: argparse.Namespace) -> int:
    disk = debian_disk.build(force=a.force, enlighten_binary=Path(a.binary) if a.binary else None)
    print(disk.kernel)
    print(disk.initrd)
    print(disk.vhdx)
    return 0


def cmd_hostile_module(a: argparse.Namespace) -> int:
    print(hostile.build_module())
    return 0


def cmd_testhost_image(a: argparse.Namespace) -> int:
    img = testhost.host_image(force=a.force)
    print(img.kernel)
    print(img.base_initrd)
    return 0


def cmd_runner(a: argparse.Namespace) -> int:
    runner, reason = testhost.detect_runner()
    print(f"{runner}\t{reason}")
    return 0


def cmd_testhost(a: argparse.Namespace) -> int:
    command = " ".join(_strip_dashdash(a.command))
    if not command:
        raise ToolError("no command given")
    files = {dst: src for src, dst in a.file}
    res = testhost.run_in_testhost(command, files=files, cpus=a.cpus, memory_mib=a.memory,
                                   timeout=a.timeout, stream=not a.quiet)
    if a.quiet:
        sys.stdout.write(res.output)
    print(f"[enlighten-tools] test host: exit {res.returncode} after {res.duration:.1f} s",
          file=sys.stderr)
    return res.returncode


def cmd_run_enlighten(a: argparse.Namespace) -> int:
    args = _strip_dashdash(a.args)
    # Arguments that name a --carry file go into the test host with it.
    carried = {os.path.abspath(c) for c in a.carry}
    args = [testhost.Carry(x) if os.path.abspath(x) in carried else x for x in args]
    kernel, initrd = a.kernel, a.initrd
    if a.default_guest:
        img = guest_image.build()
        kernel = kernel or img.kernel
        initrd = initrd or img.initrd
    res = testhost.run_enlighten(args, enlighten_binary=a.binary, guest_kernel=kernel,
                                 guest_initrd=initrd, host_cpus=a.host_cpus, timeout=a.timeout,
                                 stream=True, runner=a.runner)
    print(f"[enlighten-tools] enlighten exited with {res.returncode} "
          f"({res.runner}, {res.duration:.1f} s)", file=sys.stderr)
    return res.returncode


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="enlighten-tools", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)

    s = sub.add_parser("fetch", help="download and extract the Debian packages")
    s.set_defaults(func=cmd_fetch)

    s = sub.add_parser("guest-image", help="build the default guest; print bzImage and initrd paths")
    s.add_argument("--job", metavar="FILE", help="script to run as /job in the guest")
    s.add_argument("--add", metavar="SRC:DST", type=_pair, action="append", default=[],
                   help="extra file for the guest (repeatable)")
    s.add_argument("--tools", action="store_true",
                   help="with the disk tools (mkfs, fsck, lsblk, fio, sg3-utils...)")
    s.add_argument("--net", action="store_true", help="with the network tools (iperf3, ethtool)")
    s.add_argument("--out", metavar="DIR", help="copy bzImage and initrd.img into DIR")
    s.add_argument("--force", action="store_true", help="rebuild the base image")
    s.set_defaults(func=cmd_guest_image)

    s = sub.add_parser("debian-disk",
                       help="build the bootable Debian 12 root disk (VHDX, root=/dev/sda1); "
                            "print the kernel, initrd and VHDX paths")
    s.add_argument("--force", action="store_true", help="rebuild even if the inputs did not change")
    s.add_argument("--binary", help="Enlighten binary for `image convert` (default: build/enlighten)")
    s.set_defaults(func=cmd_debian_disk)

    s = sub.add_parser("hostile-module",
                       help="build the hostile-guest kernel module (tests/hostile) for the guest kernel; print its path")
    s.set_defaults(func=cmd_hostile_module)

    s = sub.add_parser("testhost-image", help="build the test host's cached initramfs")
    s.add_argument("--force", action="store_true")
    s.set_defaults(func=cmd_testhost_image)

    s = sub.add_parser("runner", help="print which runner (direct/testhost) would be used, and why")
    s.set_defaults(func=cmd_runner)

    s = sub.add_parser("testhost", help="run a shell command inside the test host")
    s.add_argument("--cpus", type=int, default=1)
    s.add_argument("--memory", type=int, default=testhost.DEFAULT_HOST_MEMORY_MIB, metavar="MIB")
    s.add_argument("--timeout", type=float, default=300)
    s.add_argument("--file", metavar="SRC:DST", type=_pair, action="append", default=[],
                   help="carry a file into the test host (repeatable)")
    s.add_argument("--quiet", action="store_true", help="print output at the end, not live")
    s.add_argument("command", nargs=argparse.REMAINDER)
    s.set_defaults(func=cmd_testhost)

    s = sub.add_parser("run-enlighten",
                       help="run Enlighten (directly or in the test host), streaming its output")
    s.add_argument("--binary", help="Enlighten binary (default: build/enlighten or $ENLIGHTEN_BINARY)")
    s.add_argument("--kernel", help="guest kernel, passed as --kernel")
    s.add_argument("--initrd", help="guest initrd, passed as --initrd")
    s.add_argument("--default-guest", action="store_true",
                   help="use the default guest image for --kernel/--initrd not given")
    s.add_argument("--host-cpus", type=int)
    s.add_argument("--timeout", type=float, default=600)
    s.add_argument("--runner", choices=["direct", "testhost"])
    s.add_argument("--carry", metavar="FILE", action="append", default=[],
                   help="a file that an argument of Enlighten's names as a whole (e.g. --disk FILE): "
                        "in the test host, it is carried in and the argument renamed (repeatable)")
    s.add_argument("args", nargs=argparse.REMAINDER, help="-- ARGS for Enlighten, e.g. run --cpus 2")
    s.set_defaults(func=cmd_run_enlighten)
    return p


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    try:
        return a.func(a)
    except (testhost.TestHostTimeout, testhost.CommandTimeout) as e:
        print(f"enlighten-tools: error: {e}", file=sys.stderr)
        return 124
    except ToolError as e:
        print(f"enlighten-tools: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
