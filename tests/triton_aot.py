"""Compile the fused warp kernels for a GPU (sm_90) without one: Triton's front end and ptxas
(shipped in the triton wheel) reject what its interpreter lets pass (a non-constexpr global, a
type that does not unify). Run in its own process: TRITON_INTERPRET must be unset when the
kernels are defined.

    python tests/triton_aot.py          # a covering set: every value of every flag, ~30 variants
    python tests/triton_aot.py --all    # every variant (about 4 minutes)
"""
import itertools
import os
import sys

os.environ.pop("TRITON_INTERPRET", None)
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from stnkit.kernels.warp2d import warp2d_bwd, warp2d_fwd  # noqa: E402
from stnkit.kernels.warp3d import warp3d_bwd, warp3d_fwd  # noqa: E402

C = "constexpr"
SIZES_2D = dict(K="i32", C="i32", H="i32", W="i32", Ho="i32", Wo="i32")
SIZES_3D = dict(C="i32", D="i32", H="i32", W="i32", Do="i32", Ho="i32", Wo="i32")
BWD = ((True, True, False), (True, True, True), (False, True, False), (True, False, False))  # NEED_X, NEED_THETA, DET


def variants(everything: bool):
    """(kernel, signature, constexprs) to compile."""
    for dt in ("fp32", "fp64"):
        P = f"*{dt}"
        flags2 = list(itertools.product((0, 1), (0, 1, 2), (False, True), (0, 1, 2)))  # MODE, PAD, ALIGN, KIND
        flags3 = list(itertools.product((0, 1), (0, 1, 2), (False, True)))
        if not everything:  # each KIND x MODE once, PAD and ALIGN cycling through their values
            flags2 = [(m, i % 3, bool(i % 2), k) for i, (m, k) in enumerate(itertools.product((0, 1), (0, 1, 2)))]
            flags3 = [(m, p, bool((m + p) % 2)) for m, p in ((0, 0), (1, 1), (1, 2))]
        for MODE, PAD, ALIGN, KIND in flags2:
            meta = dict(BLOCK=256, MODE=MODE, PAD=PAD, ALIGN=ALIGN, KIND=KIND)
            yield warp2d_fwd, dict(x_ptr=P, theta_ptr=P, tgt_ptr=P, out_ptr=P, **SIZES_2D, **{k: C for k in meta}), meta
            for NX, NT, DET in BWD if everything else BWD[:2]:
                m = dict(meta, NEED_X=NX, NEED_THETA=NT, DET=DET)
                sig = dict(x_ptr=P, theta_ptr=P, tgt_ptr=P, go_ptr=P, gx_ptr=P, det_val_ptr=P, det_idx_ptr="*i64",
                           part_ptr=P, **SIZES_2D, **{k: C for k in m})
                yield warp2d_bwd, sig, m
        for MODE, PAD, ALIGN in flags3:
            meta = dict(BLOCK=256, MODE=MODE, PAD=PAD, ALIGN=ALIGN)
            yield warp3d_fwd, dict(x_ptr=P, theta_ptr=P, out_ptr=P, **SIZES_3D, **{k: C for k in meta}), meta
            for NX, NT, DET in BWD if everything else BWD[:2]:
                m = dict(meta, NEED_X=NX, NEED_THETA=NT, DET=DET)
                sig = dict(x_ptr=P, theta_ptr=P, go_ptr=P, gx_ptr=P, det_val_ptr=P, det_idx_ptr="*i64", part_ptr=P,
                           **SIZES_3D, **{k: C for k in m})
                yield warp3d_bwd, sig, m


def main(argv):
    target, failed, n = GPUTarget("cuda", 90, 32), 0, 0
    for fn, sig, meta in variants("--all" in argv):
        n += 1
        try:
            triton.compile(ASTSource(fn, sig, meta), target=target)
        except Exception as e:  # noqa: BLE001 - every failure is reported
            failed += 1
            print(f"FAIL {fn.__name__} {sig.get('x_ptr')} {meta}: {type(e).__name__}: {str(e)[:1500]}")
    print(f"compiled {n - failed} of {n} kernel variants for sm_90")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
