"""Speed of our blocked pure-PyTorch selective scan against the per-step reference loop, on random data.

Both come from :mod:`stages.models.selective_scan`: ``selective_scan_fast`` (what REF-Net's SS2D runs on
CPU) and ``selective_scan_reference`` (mamba_ssm's ``selective_scan_ref`` recurrence, one Python step
per position, autograd through the loop). For each case and sequence length ``L`` (1k .. 16k) the
table gives seconds for the forward pass and for forward + backward (gradients w.r.t. every input), the
ratio reference / fast, and the largest difference between the two outputs relative to the output's
largest magnitude (a sanity check, float32).

Cases (float32, ``delta_softplus=True`` with ``delta_bias`` and ``D``, no ``z``, as SS2D calls it):

* ``refnet``: ``d_state = 1`` with B, C grouped over the four scan directions, batch 2 and
  ``D = 4 x 64 = 256`` channels, i.e. one SS2D call of the quick preset (decoder width 32,
  ``d_inner = 64``); at 64x64 tiles a level holds up to 256 positions (1024 with all five levels);
  the paper preset's 256x256 tiles give 16 384 positions at stride 2.
* ``mamba``: ``d_state = 16`` with B, C shared by all channels (Mamba's layout), batch 1, ``D = 128``.

Timing: CPU seconds of this process (``time.process_time``), best of ``--repeats`` runs after one
warm-up for the fast scan; the reference is run fewer times where it is slow (once from 8k on, without
warm-up: each of its runs takes seconds, so first-call effects are negligible). CPU time rather than
wall time because the benchmark machine is shared: with other jobs running, wall times were 2-4x
higher and erratic while CPU times stayed put. With ``--threads 1`` (the ``train`` rule's setting, the
default) CPU time is the compute time; with more threads it sums them. glibc's malloc thresholds are
raised first, as every pipeline stage does (``stages.runtime.tune_malloc``).

Usage::

    python benchmarks/bench_selective_scan.py                       # prints the table
    python benchmarks/bench_selective_scan.py --out benchmarks/results/bench_selective_scan.txt
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import time
from collections.abc import Callable

import torch

from stages.models.selective_scan import DEFAULT_BLOCK, selective_scan_fast, selective_scan_reference
from stages.runtime import tune_malloc

CASES = {
    "refnet": {"batch": 2, "channels": 256, "state": 1, "bc": "grouped4"},
    "mamba": {"batch": 1, "channels": 128, "state": 16, "bc": "shared"},
}
LENGTHS = (1024, 2048, 4096, 8192, 16384)


def inputs(case: dict, length: int, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    b, d, n = case["batch"], case["channels"], case["state"]
    bc_shape = (b, 4, n, length) if case["bc"] == "grouped4" else (b, n, length)
    return [
        torch.randn(b, d, length, generator=g),  # u
        torch.randn(b, d, length, generator=g) * 0.5,  # delta
        -torch.arange(1, n + 1, dtype=torch.float32).repeat(d, 1),  # A: S4D-real init
        torch.randn(*bc_shape, generator=g),  # B
        torch.randn(*bc_shape, generator=g),  # C
        torch.ones(d),  # D
        torch.randn(d, generator=g) * 0.5 - 3.0,  # delta_bias: softplus(.) ~ 0.05
    ]


def run(fn: Callable, args: list[torch.Tensor], backward: bool) -> torch.Tensor:
    u, delta, A, B, C, D, bias = args
    if backward:
        for t in args:
            t.requires_grad_(True)
            t.grad = None
    out = fn(u, delta, A, B, C, D, delta_bias=bias, delta_softplus=True)
    if backward:
        out.sum().backward()
        for t in args:
            t.requires_grad_(False)
    return out.detach()


def best_time(fn: Callable, args: list[torch.Tensor], backward: bool, repeats: int, warmup: bool) -> float:
    if warmup:
        run(fn, args, backward)
    times = []
    for _ in range(repeats):
        start = time.process_time()
        run(fn, args, backward)
        times.append(time.process_time() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3, help="fast-scan runs per point (best is kept)")
    parser.add_argument("--lengths", type=int, nargs="+", default=list(LENGTHS))
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--no-backward", action="store_true", help="forward only")
    parser.add_argument("--out", help="also write the table to this file")
    args = parser.parse_args()
    tune_malloc()
    torch.set_num_threads(args.threads)

    lines: list[str] = []

    def emit(line: str = "") -> None:
        print(line, flush=True)
        lines.append(line)

    emit(
        f"bench_selective_scan: {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}, "
        f"{platform.machine()}, "
        f"{os.cpu_count()} CPUs; Python {platform.python_version()}, torch {torch.__version__}; "
        f"{args.threads} thread(s), float32, block {DEFAULT_BLOCK}"
    )
    emit("seconds = CPU time of the process (best of runs); fwd = forward, f+b = forward + backward")
    emit("ratio = reference s / fast s; diff = max |fast - reference| / max |reference| (forward output)")
    for name in args.cases:
        case = CASES[name]
        emit()
        emit(
            f"case {name}: batch {case['batch']}, channels {case['channels']}, d_state {case['state']}, "
            f"B/C {case['bc']}"
        )
        emit(
            f"{'L':>6}  {'fwd fast s':>10}  {'fwd ref s':>9}  {'ratio':>6}  "
            f"{'f+b fast s':>10}  {'f+b ref s':>9}  {'ratio':>6}  {'diff':>8}"
        )
        for length in args.lengths:
            x = inputs(case, length)
            ref_repeats, ref_warmup = (1, False) if length >= 8192 else (2, True)
            fast_f = best_time(selective_scan_fast, x, False, args.repeats, True)
            ref_f = best_time(selective_scan_reference, x, False, ref_repeats, ref_warmup)
            with torch.no_grad():
                y_fast = run(selective_scan_fast, x, False)
                y_ref = run(selective_scan_reference, x, False)
            diff = float((y_fast - y_ref).abs().max() / y_ref.abs().max())
            row = f"{length:>6}  {fast_f:>10.4f}  {ref_f:>9.3f}  {ref_f / fast_f:>5.1f}x"
            if args.no_backward:
                row += f"  {'-':>10}  {'-':>9}  {'-':>6}"
            else:
                fast_b = best_time(selective_scan_fast, x, True, args.repeats, True)
                ref_b = best_time(selective_scan_reference, x, True, ref_repeats, ref_warmup)
                row += f"  {fast_b:>10.4f}  {ref_b:>9.3f}  {ref_b / fast_b:>5.1f}x"
            emit(row + f"  {diff:>8.1e}")
    if args.out:
        with open(args.out, "w") as fh:
            fh.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
