"""Does an error raised inside bd_kernels' compiled ops reach Python as a RuntimeError?

On the H200 lent on 2026-12-04 (extension built there by /opt/gcc/bin/g++ against torch 2.11) a test
expecting such an error crashed the process with SIGSEGV, while every CUDA test passed: that g++ had
linked libstdc++ statically into the extension, and only messages that format a number crashed
(bd_kernels/linkage.py). bench/gpu.sh runs this after the build and, on a crash, again under gdb.
Each step prints before it runs, so the last line printed names the step that crashed.
"""

from __future__ import annotations

import faulthandler

import bd_kernels
import torch

faulthandler.enable()  # on a crash, the Python stack of the call that crashed

if not bd_kernels.has_extension():
    raise SystemExit("bd_kernels' compiled extension is not loaded: build it first (bench/gpu.sh does)")
print("bd_kernels", bd_kernels.build_info(), flush=True)
# which C++ runtimes the process loaded (a second libstdc++ beside torch's is a suspect)
with open("/proc/self/maps") as maps:
    runtimes = sorted({line.split()[-1] for line in maps if "libstdc++" in line or "libgcc_s" in line})
print("C++ runtimes loaded:", runtimes, flush=True)
try:  # an error thrown inside torch's own libraries, for comparison
    torch.mm(torch.zeros(2, 3), torch.zeros(2, 3))
except RuntimeError as error:
    print("torch's own error reached Python:", str(error)[:60], flush=True)

images = torch.zeros(2, 3, 8, 8, dtype=torch.uint8)
mean, std = torch.zeros(3), torch.ones(3)
checks = {
    # the schema's str argument checked in C++ (the Python wrapper checks it first, so call the op directly)
    "mode": lambda: torch.ops.bd_kernels.apply_trigger(
        images, None, None, None, "paint", 1.0, mean, std, None, 0, None, torch.float32, False
    ),
    # the crop offsets checked in C++ after reading them (a message without formatted values)
    "crop offsets": lambda: bd_kernels.apply_trigger(
        images, mean=mean, std=std, crop_offsets=torch.full((2, 2), 9), padding=4
    ),
    # the pattern's shape, its message formatting the tensor's sizes: the call the crashing test made (SIGSEGV in
    # tests/bd_kernels/test_ops.py line 88 on the H200's second run, the two checks above having raised)
    "pattern shape": lambda: bd_kernels.apply_trigger(
        images, torch.ones(2, dtype=torch.bool), torch.zeros(3, 4, 4), mean=mean, std=std
    ),
}


def raise_each(when: str) -> None:
    for name, call in checks.items():
        print(f"raising the {name} check ({when}) ...", flush=True)
        try:
            call()
            raise SystemExit(f"the {name} check raised nothing")
        except RuntimeError as error:
            print("  reached Python:", str(error)[:70], flush=True)


raise_each("no CUDA context")
if torch.cuda.is_available():  # the crashing test ran after 69 tests that had used the GPU
    torch.zeros(1, device="cuda").add_(1)
    torch.cuda.synchronize()
    raise_each("a CUDA context live")
print("errors from the extension reach Python", flush=True)
