"""What every fused CPU kernel in :mod:`recbole_mamba.ops` shares: numba's fast-math flags, the
dtype-preserving scalar cast, the vectorisable float32 ``exp``, and the checks and conversions
of the Python wrappers around the compiled loops.

Kernels (``selective_scan_cpu``, ``causal_conv1d``, ``causal_conv1d_update``,
``selective_state_update``, ``causal_lsa``, ``causal_lsa_step``, ``dropout_cpu``) import from
here and from nowhere else in ``ops``, so no kernel file depends on another kernel's privates.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic, overload

FASTMATH = {"contract", "arcp", "reassoc", "nsz", "afn"}
"""numba ``fastmath`` flags of every kernel: no ``nnan``/``ninf``, so a NaN propagates to the
output (and to the model's NaN-loss check) instead of being optimised away."""

CPU_DTYPES = (torch.float32, torch.float64)
"""The dtypes every fused CPU kernel takes (float32 for training, float64 for gradcheck)."""

# The loops over the channels run over contiguous rows sliced before the loop and indexed by
# the loop counter, with few stores each, so that LLVM vectorises them: a row indexed as
# ``x[b, t, lo + j]`` goes through numba's wrap-around of negative indices, which makes every
# address data-dependent (gathers), and every extra store adds run-time alias checks.
#
# llvmlite's pip wheels have no vector math library (SVML), so ``math.exp`` in a loop stays a
# scalar libm call. For float32, ``exp32`` below is plain arithmetic that vectorises (16
# float32 lanes with AVX-512) inside the caller's loop: Cody-Waite range reduction, the Cephes
# ``expf`` polynomial, and 2**k built in the exponent bits of an int32 reinterpreted as float32
# (an LLVM bitcast); max relative error 8.1e-8 over [-87, 88] (under one float32 ulp). Every
# scalar in it stays float32 (see ``like``). float64 (gradcheck) keeps ``math.exp``.


def like(x, ref):  # pragma: no cover - replaced by the overload inside compiled code
    """``x`` converted to ``ref``'s dtype (float32 or float64).

    Numba types float literals as float64, and one float64 scalar in a loop turns all of its
    float32 arithmetic into float64 (half the SIMD width plus conversions). Every scalar that
    meets array data goes through this cast.
    """
    return x


@overload(like, inline="always")
def _ol_like(x, ref):
    if isinstance(ref, types.Array) and ref.dtype == types.float32:
        return lambda x, ref: np.float32(x)
    return lambda x, ref: np.float64(x)


@njit(inline="always", fastmath=FASTMATH)
def exp_parts(x, ref):  # pragma: no cover - compiled
    """float32 exp(x) as (p, bits): exp(x) = p * 2**k, ``bits`` the int32 pattern of the float32
    2**k (:func:`exp32` multiplies by it)."""
    lo = like(-87.0, ref)
    hi = like(88.0, ref)
    x = lo if x < lo else x  # written so that NaN passes through
    x = hi if x > hi else x
    kf = np.floor(x * like(1.4426950408889634, ref) + like(0.5, ref))  # np.floor keeps the
    # dtype (math.floor gives int64, which would turn the polynomial into float64 arithmetic)
    r = x - kf * like(0.693359375, ref) + kf * like(2.12194440e-4, ref)
    p = (((((like(1.9875691500e-4, ref) * r + like(1.3981999507e-3, ref)) * r
            + like(8.3334519073e-3, ref)) * r + like(4.1665795894e-2, ref)) * r
          + like(1.6666665459e-1, ref)) * r + like(5.0000001201e-1, ref)) * r * r + r + like(1.0, ref)
    return p, (np.int32(kf) + 127) << 23


@intrinsic
def _f32_from_bits(typingctx, bits):
    """The float32 whose bit pattern is the low 32 bits of the integer ``bits`` (an LLVM
    ``trunc`` + ``bitcast``, which vectorise; numba has no scalar reinterpretation of its own,
    only array views)."""
    if not isinstance(bits, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        low = args[0] if bits.bitwidth == 32 else builder.trunc(args[0], ir.IntType(32))
        return builder.bitcast(low, ir.FloatType())

    return types.float32(bits), codegen


@njit(inline="always", fastmath=FASTMATH)
def exp32(x, ref):  # pragma: no cover - compiled
    """exp(x) for float32 ``x`` as plain arithmetic that LLVM vectorises inside the caller's loop
    (``exp_parts`` times 2**k built by a bitcast), so a loop uses the value at once. Only for
    float32 (``ref`` a float32 array)."""
    p, bits = exp_parts(x, ref)
    return p * _f32_from_bits(bits)


@njit(inline="always", fastmath=FASTMATH)
def exp_row(dt, a_row, out, fast):  # pragma: no cover - compiled
    """out[n] = exp(dt * a_row[n]) for every n (``fast``: :func:`exp32`, for float32 rows; else
    ``math.exp``). ``out`` may be ``a_row`` itself."""
    if fast:
        for n in range(a_row.shape[0]):
            out[n] = exp32(dt * a_row[n], a_row)
    else:
        for n in range(a_row.shape[0]):
            out[n] = math.exp(dt * a_row[n])


# ---------------------------------------------------------------- the online softmax

@njit(inline="always", fastmath=FASTMATH)
def exp_or_zero(arg, out, fast):  # pragma: no cover - compiled
    """out[p] = exp(arg[p]), exactly 0 where arg[p] is -inf (the fast exp clamps at -87)."""
    one = like(1.0, arg)
    exp_row(one, arg, out, fast)
    for p in range(arg.shape[0]):
        if arg[p] == -np.inf:
            out[p] = 0


@njit(inline="always", fastmath=FASTMATH)
def pool_update(logit, x, top0, norm0, total0, top, norm, total, arg, scale, weight,
                 fast):  # pragma: no cover - compiled
    """Add one position to a row's online-softmax pooling (the causal LSA's interest pooling, in
    :mod:`~recbole_mamba.ops.causal_lsa` over a sequence and :mod:`~recbole_mamba.ops.causal_lsa_step`
    per event): the state (top0 (P,), norm0 (P,),
    total0 (P, D)) before it -> (top, norm, total) after it (the same arrays: in place). A
    ``-inf`` logit (padding) leaves interest p unchanged."""
    nint = top.shape[0]
    for p in range(nint):
        lg = logit[p]
        old = top0[p]
        if lg == -np.inf:
            arg[p] = 0.0
            weight[p] = -np.inf
            top[p] = old
        else:
            new_top = lg if lg > old else old
            arg[p] = old - new_top  # -inf while the pooling is empty
            weight[p] = lg - new_top
            top[p] = new_top
    exp_or_zero(arg, scale, fast)
    exp_or_zero(weight, weight, fast)
    for p in range(nint):
        norm[p] = norm0[p] * scale[p] + weight[p]
        row0 = total0[p]
        row = total[p]
        s = scale[p]
        w = weight[p]
        for d in range(row.shape[0]):
            row[d] = row0[d] * s + w * x[d]


def as_numpy(t: torch.Tensor | None, dtype: torch.dtype, ndim: int = 3) -> np.ndarray:
    """A contiguous NumPy view of ``t`` in ``dtype``; for ``None`` a 1-element dummy with
    ``ndim`` dimensions (a compiled kernel's argument types fix each array's rank)."""
    if t is None:
        return np.zeros((1,) * ndim, dtype=np.float64 if dtype == torch.float64 else np.float32)
    return t.detach().to(dtype).contiguous().numpy()


def needs_grad(*tensors: torch.Tensor | None) -> bool:
    """Whether autograd must see an op on ``tensors``: the fused CPU kernels of the one-step
    ops are inference-only, so their dispatch falls back to the torch form then."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def fusable_state(*states: torch.Tensor) -> bool:
    """Whether the fused CPU one-step kernels can update ``states`` in place: contiguous CPU
    tensors, all float32 or all float64."""
    dtype = states[0].dtype
    return dtype in CPU_DTYPES and all(
        t.device.type == "cpu" and t.is_contiguous() and t.dtype == dtype for t in states)


def cpu_tensors(*tensors: torch.Tensor | None) -> bool:
    """Whether the given tensors (``None`` skipped) are all on the CPU in one of
    :data:`CPU_DTYPES`, the same for all: what the fused whole-sequence kernels take."""
    present = [t for t in tensors if t is not None]
    dtype = present[0].dtype
    return dtype in CPU_DTYPES and all(t.device.type == "cpu" and t.dtype == dtype for t in present)


def check_shapes(op: str, expected: dict[str, tuple[torch.Tensor | None, tuple[int, ...]]],
                 context: str) -> None:
    """Raise ``ValueError`` naming the first argument whose shape differs from its expected one.

    ``expected`` maps argument name -> (tensor or ``None`` to skip, shape); ``context`` says what
    fixed the shapes (e.g. ``"u is (2, 8, 5), A is (8, 4)"``).
    """
    for name, (t, shape) in expected.items():
        if t is not None and tuple(t.shape) != tuple(shape):
            raise ValueError(f"{op}: {name} must have shape {tuple(shape)} ({context}), got {tuple(t.shape)}")
