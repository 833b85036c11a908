"""Run torch CPU inference under the seccomp filter systemd installs for ``MemoryDenyWriteExecute=yes``.

systemd (src/shared/seccomp-util.c, seccomp_memory_deny_write_execute) makes these fail with EPERM:
mmap/mmap2 with PROT_WRITE|PROT_EXEC, mprotect/pkey_mprotect adding PROT_EXEC, shmat with SHM_EXEC. This script loads
the same rules through libseccomp, then tries 2-D and 3-D convolutions with torch's oneDNN (MKL-DNN) on and
off, and prints one JSON object with the outcomes. Used by tests/systemd/test_mdwe.py; run by hand to re-check a new
torch: ``.venv/bin/python tests/systemd/mdwe_probe.py``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import json
import mmap
import sys

PROT_WRITE, PROT_EXEC = 0x2, 0x4
SHM_EXEC = 0o100000
SCMP_ACT_ALLOW = 0x7FFF0000
SCMP_CMP_MASKED_EQ = 7
PR_SET_NO_NEW_PRIVS = 38


class ArgCmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int), ("datum_a", ctypes.c_uint64),
                ("datum_b", ctypes.c_uint64)]


def load_filter() -> None:
    name = ctypes.util.find_library("seccomp")
    if name is None:
        raise OSError("libseccomp is not installed")
    lib = ctypes.CDLL(name, use_errno=True)
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_rule_add_array.argtypes = [
        ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint, ctypes.POINTER(ArgCmp)
    ]
    lib.seccomp_load.argtypes = [ctypes.c_void_p]
    ctx = lib.seccomp_init(SCMP_ACT_ALLOW)
    deny = 0x00050000 | errno.EPERM  # SCMP_ACT_ERRNO(EPERM)
    for syscall, arg, mask in (
        ("mmap", 2, PROT_WRITE | PROT_EXEC),
        ("mprotect", 2, PROT_EXEC),
        ("pkey_mprotect", 2, PROT_EXEC),
        ("shmat", 2, SHM_EXEC),
    ):
        nr = lib.seccomp_syscall_resolve_name(syscall.encode())
        cmp = (ArgCmp * 1)(ArgCmp(arg, SCMP_CMP_MASKED_EQ, mask, mask))
        if lib.seccomp_rule_add_array(ctx, deny, nr, 1, cmp) != 0:
            raise OSError(f"seccomp_rule_add {syscall} failed")
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")
    if lib.seccomp_load(ctx) != 0:
        raise OSError("seccomp_load failed")


def wx_mmap_denied() -> bool:
    try:
        mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC).close()
    except PermissionError:
        return True
    return False


def inference() -> dict[str, str]:
    """2-D and 3-D convolution stacks, as in the project's classifiers and segmenter (plain torch: monai's nets fail
    the same way, they only take longer to import)."""
    import torch
    from torch import nn

    torch.set_num_threads(1)
    out: dict[str, str] = {}
    nets = {
        "conv2d": (
            nn.Sequential(
                nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1)
            ),
            torch.randn(2, 1, 96, 96),
        ),
        "conv3d": (
            nn.Sequential(nn.Conv3d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv3d(8, 8, 3, padding=1)),
            torch.randn(1, 1, 16, 48, 48),
        ),
    }
    for mkldnn in (True, False):
        torch.backends.mkldnn.enabled = mkldnn
        for name, (net, x) in nets.items():
            key = f"{name}_mkldnn_{'on' if mkldnn else 'off'}"
            try:
                with torch.inference_mode():
                    net.eval()(x)
                out[key] = "ok"
            except RuntimeError as exc:
                out[key] = f"error: {exc}".splitlines()[0][:200]
    return out


def main(argv: list[str]) -> int:
    if "--no-filter" not in argv:  # the control run: same inference without the filter
        load_filter()
    result: dict[str, object] = {"wx_mmap_denied": wx_mmap_denied()}
    result.update(inference())
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
