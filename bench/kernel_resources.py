"""Registers, spill stack and shared memory of the short-key attention kernels, built for an H100
(sm_90) on a machine without a GPU: the resource report that says whether a tile layout can run
fast, before spending device time on it.

    pip install triton   # not a project dependency; the wheel carries its own ptxas and cuobjdump
    python bench/kernel_resources.py

Compiles each kernel of ``bench/short_attention_kernel.py`` at the ITHQ cross-attention shape
(head dim 88, 77 keys: padded to 128 x 128 tiles, or chunked as 64 + 32 and 64 + 16) for each
setting below with ``triton.compile`` and a ``GPUTarget``, then
reads ``cuobjdump -res-usage`` of the cubin. 255 registers with a stack frame means spilling, and
the shared memory decides how many programs share an SM (228 KB on an H100).
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile

import short_attention_kernel as kernels  # bench/short_attention_kernel.py
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

HOPPER = GPUTarget("cuda", 90, 128)
PADDED = {"head_dim": 88, "block_l": 128, "block_d": 128}  # ITHQ: head dim 88 -> 128, 77 keys -> 128
CHUNKED = {"head_dim": 88, "block_lb": 16, "block_db": 32}  # keys 64 + 16, head dim 64 + 32
BF16_POINTERS = {"q", "k", "v", "out", "grad_out", "grad_q"}
FLOAT32_POINTERS = {"lse", "grad_k", "grad_v"}
SETTINGS = [  # (kernel, constexprs, warps, stages)
    ("_forward_kernel", {**PADDED, "block_m": 128, "blocks_per_program": 1}, 8, 3),
    ("_forward_kernel", {**PADDED, "block_m": 64, "blocks_per_program": 16}, 4, 3),
    ("_backward_kernel", {**PADDED, "block_m": 128, "blocks_per_program": 1, "write_dq": True, "sum_kv": True}, 8, 1),
    ("_backward_kernel", {**PADDED, "block_m": 64, "blocks_per_program": 1, "write_dq": True, "sum_kv": False}, 4, 1),
    ("_backward_kernel", {**PADDED, "block_m": 64, "blocks_per_program": 16, "write_dq": False, "sum_kv": True}, 8, 2),
    ("_forward_chunked_kernel", {**CHUNKED, "block_m": 64, "blocks_per_program": 16}, 4, 3),
    ("_forward_chunked_kernel", {**CHUNKED, "block_m": 128, "blocks_per_program": 8}, 8, 2),
    ("_backward_chunked_kernel", {**CHUNKED, "block_m": 64, "blocks_per_program": 1, "write_dq": True,
                                  "sum_k": True, "sum_v": True}, 4, 1),
    ("_backward_chunked_kernel", {**CHUNKED, "block_m": 64, "blocks_per_program": 1, "write_dq": True,
                                  "sum_k": False, "sum_v": False}, 4, 1),
    ("_backward_chunked_kernel", {**CHUNKED, "block_m": 64, "blocks_per_program": 16, "write_dq": False,
                                  "sum_k": True, "sum_v": True}, 8, 2),
    ("_backward_chunked_kernel", {**CHUNKED, "block_m": 64, "blocks_per_program": 16, "write_dq": False,
                                  "sum_k": True, "sum_v": False}, 4, 2),
    ("_backward_chunked_kernel", {**CHUNKED, "block_m": 64, "blocks_per_program": 16, "write_dq": False,
                                  "sum_k": False, "sum_v": True}, 4, 2),
    ("_backward_chunked_kernel", {**CHUNKED, "block_m": 64, "blocks_per_program": 4, "write_dq": False,
                                  "sum_k": True, "sum_v": False}, 4, 2),
    ("_backward_chunked_kernel", {**CHUNKED, "block_m": 128, "blocks_per_program": 8, "write_dq": False,
                                  "sum_k": True, "sum_v": False}, 8, 2),
]


def argument_type(name: str) -> str:
    if name in BF16_POINTERS:
        return "*bf16"
    if name in FLOAT32_POINTERS:
        return "*fp32"
    return "fp32" if name.startswith("scale") else "i32"


def resources(kernel, constexprs: dict, num_warps: int, num_stages: int) -> dict:
    """The cubin's registers, stack (spills) and static shared memory, plus Triton's dynamic
    shared memory, for one build."""
    signature = {name: "constexpr" if name in constexprs else argument_type(name) for name in kernel.arg_names}
    compiled = triton.compile(ASTSource(fn=kernel, signature=signature, constexprs=constexprs), target=HOPPER,
                              options={"num_warps": num_warps, "num_stages": num_stages})
    tools = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as cubin:
        cubin.write(compiled.asm["cubin"])
        cubin.flush()
        report = subprocess.run([os.path.join(tools, "cuobjdump"), "-res-usage", cubin.name],
                                capture_output=True, text=True, check=True).stdout
    usage = dict(re.findall(r"(REG|STACK|SHARED):(\d+)", report))
    return {"registers": int(usage["REG"]), "stack_bytes": int(usage["STACK"]),
            "shared_kib": (int(usage["SHARED"]) + compiled.metadata.shared) / 1024}


def main() -> None:
    print(f"triton {triton.__version__}, target sm_{HOPPER.arch}; head dim 88, 77 keys")
    print("| kernel | settings | warps | stages | registers | spill stack (bytes) | shared memory (KiB) |")
    print("|---|---|---|---|---|---|---|")
    for name, extra, num_warps, num_stages in SETTINGS:
        usage = resources(getattr(kernels, name), extra, num_warps, num_stages)
        settings = ", ".join(f"{key} {value}" for key, value in extra.items() if key != "head_dim")
        print(f"| {name} | {settings} | {num_warps} | {num_stages} | {usage['registers']} | "
              f"{usage['stack_bytes']} | {usage['shared_kib']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
