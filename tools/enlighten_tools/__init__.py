"""Enlighten developer tooling: Debian artefacts, the default guest image, the test host.

Modules:
    debian       apt-get download + dpkg-deb -x into the cache (KERNEL_PACKAGE lives here)
    guest_image  the default guest: bzImage + reproducible busybox initramfs with /init
    testhost     run commands/Enlighten directly or inside a QEMU-TCG "test host" with KVM
    qemu         carry this machine's QEMU (binary, libraries, firmware) into the test host
    cpio         reproducible newc cpio writer
    kmod         module closures and index files through Debian's depmod/modprobe
Run `python3 -m enlighten_tools --help` (with tools/ on sys.path) or tools/enlighten-tools.
"""
