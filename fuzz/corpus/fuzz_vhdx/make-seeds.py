#!/usr/bin/env python3
"""Encodes real VHDX files as fuzz_vhdx inputs: u64 file size, then runs of
{u32 offset, u16 length, bytes} holding the file's non-zero bytes (zeros are implicit).
Usage: make-seeds.py IMAGE... (writes IMAGE's basename without .vhdx next to this script).
The seeds here: qemu-dynamic (qemu-img create -f vhdx -o block_size=1M, 4M, and qemu-io
'write -P 0x61 1M 4k'), qemu-fixed (subformat=fixed,block_state_zero=off, 2M); ours-*
from `enlighten image create/convert` (dynamic, fixed, 4K sectors, a differencing child
whose parent is absent), and ours-dirty-log (VHDX_TEST_SEED_DIR=DIR vhdx_test
--gtest_filter=*LogReplay keeps the image with a pending log entry; its data block zeroed
before encoding)."""
import os, struct, sys

def encode(data):
    out = [struct.pack('<Q', len(data))]
    i, n = 0, len(data)
    while i < n:
        if data[i] == 0:
            i += 1
            continue
        j = i
        zeros = 0
        while j < n and j - i < 65535 and zeros < 16:
            zeros = zeros + 1 if data[j] == 0 else 0
            j += 1
        j -= zeros
        out.append(struct.pack('<IH', i, j - i) + data[i:j])
        i = j
    return b''.join(out)

here = os.path.dirname(os.path.abspath(__file__))
for path in sys.argv[1:]:
    with open(path, 'rb') as f:
        blob = encode(f.read())
    name = os.path.basename(path).removesuffix('.vhdx')
    with open(os.path.join(here, name), 'wb') as f:
        f.write(blob)
    print(name, len(blob))
