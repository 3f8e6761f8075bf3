"""Max, average and adaptive pooling over 2-D windows, and F.pad."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import protocols as P
from ..errors import UnsupportedOpError
from ..tensor import ShareTensor, implements
from ._common import Tensor, _fused_m, _meta_shape, _pair, _shape_of, _wrap
from .arithmetic import _add, _divide_public

# Pooling gathers each window from every party's own share row (local, no communication). Taps outside the input
# (padding, the ``ceil_mode`` overhang, the short windows of adaptive pooling) hold a public fill that the first
# party adds: 0 for average pooling (torch's zero padding), and for max pooling the smallest value of the comparison
# range, ``-(2^(compare_bits - 1) - 1)`` LSB (:func:`maxpool_fill`). Every value a pairwise comparison is exact for
# lies in ``(-2^(compare_bits - 1), 2^(compare_bits - 1))`` LSB (``share`` refuses larger inputs), so it is >= the
# fill and its difference with the fill stays in the comparison range: padding never wins a max (a tie with a value
# at the very bottom of the range yields that same value). A window made of padding only is refused up front.
#
# Max over a window of k taps, two protocols (``MAXPOOL_METHOD`` maps k to one; see ``maxpool_method``):
#   "pairs": the argmax protocol: all k(k-1)/2 comparisons in parallel, one argmax's rounds (5 by default) whatever k;
#   "tree":  max(a, b) = b + relu(a - b) on halves: ceil(log2 k) levels of one ReLU each (4 rounds by default),
#            k - 1 comparisons in all (a sequential chain would need k - 1 levels; the tree is never slower).
# Measured with benchmarks/bench_mnist.py --model lenet --threads 1 (2 parties, 2 cores shared with other jobs; LeNet-5
# with the peers' weights, 1,000 MNIST images at batch 100, both pools 2x2): simulated runtime, median of 3, pairs
# 11.4 s, tree 6.7 s (the two pools: 3.1 s vs 1.4 s); distributed runtime (a process per party and the dealer,
# localhost), in-party seconds in two sittings, pairs 18.8 and 24.1 s, tree 16.7 and 16.8 s; online 391 vs 451
# rounds, 137 vs 117 MB sent per party, 2.8 vs 1.8 GB from the dealer to the first party. Single pooling calls
# (batch 100, one core, online + dealer): 2x2 on conv1's output pairs 0.55 s, tree 0.11 s; 3x3 stride 2 padding 1
# (a ResNet stem) 2.8 s vs 0.24 s; 4x4 2.0 s vs 0.10 s; 5x5 4.7 s vs 0.12 s. The tree is faster for every window
# size measured (fewer comparisons, less dealer material); "pairs" wins only where a round trip costs more than the
# compute it saves (about 50-70 ms per extra round for LeNet at batch 100): set MAXPOOL_METHOD[k] = "pairs" there. Every party must use the same protocol: processes spawned by the distributed
# runtime import this module afresh, so set the default with the environment variable LIGHTNING_SMPC_MAXPOOL
# ("pairs" or "tree"), which they inherit, rather than by assigning MAXPOOL_DEFAULT in one process.
MAXPOOL_METHOD: dict[int, str] = {}
MAXPOOL_DEFAULT = __import__("os").environ.get("LIGHTNING_SMPC_MAXPOOL", "tree")
if MAXPOOL_DEFAULT not in ("pairs", "tree"):
    raise ValueError(f"Expected LIGHTNING_SMPC_MAXPOOL to be 'pairs' or 'tree', but got {MAXPOOL_DEFAULT!r}.")


def maxpool_method(k: int) -> str:
    """The max-pooling protocol used for a window of ``k`` taps: ``"pairs"`` or ``"tree"``."""
    return MAXPOOL_METHOD.get(k, MAXPOOL_DEFAULT)


def maxpool_fill(sess, frac: int) -> int:
    """Raw fill (at ``frac`` fractional bits) of max-pooling taps outside the input: the smallest in-range value."""
    return -((1 << (sess.compare_bits - 1)) - 1) << max(frac - sess.precision_bits, 0)


def _pooling_input(x: ShareTensor, name: str) -> None:
    """2-D pooling works on the last two dims of a 3-D or 4-D value (as torch); never reach the party axis."""
    nd = len(_shape_of(x))
    if nd not in (3, 4):
        raise IndexError(f"{name}: expected a 3-D (C, H, W) or 4-D (N, C, H, W) input, but got {nd}-D.")


def _stride(stride, kernel_size):
    return _pair(kernel_size if stride is None or (isinstance(stride, (tuple, list)) and len(stride) == 0) else stride)


def _pool_axis(n: int, k: int, s: int, p: int, d: int, n_out: int) -> tuple[Tensor, Tensor]:
    """Input index of every tap ``[n_out, k]`` of a strided (padded, dilated) pooling axis, and whether it is inside."""
    idx = (torch.arange(n_out) * s - p)[:, None] + torch.arange(k)[None, :] * d
    return idx, (idx >= 0) & (idx < n)


def _adaptive_axis(n: int, n_out: int) -> tuple[Tensor, Tensor]:
    """Adaptive pooling's windows (torch: ``[floor(i n / o), ceil((i + 1) n / o))``), padded to the widest one."""
    start = torch.arange(n_out) * n // n_out
    end = -((-(torch.arange(1, n_out + 1) * n)) // n_out)
    idx = start[:, None] + torch.arange(int((end - start).max()))[None, :]
    return idx, idx < end[:, None]


def _windows(x: ShareTensor, rows, cols, fill: int) -> Tensor:
    """Shares ``[P, ..., oh, ow, kh * kw]`` of every window; taps outside the input hold the public ``fill``."""
    (ih, vh), (iw, vw) = rows, cols
    sh = x._shares
    h, w = sh.shape[-2:]
    dev = sh.device
    g = sh.index_select(-2, ih.clamp(0, h - 1).flatten().to(dev))
    g = g.reshape(g.shape[:-2] + tuple(ih.shape) + (w,))  # [P, ..., oh, kh, W]
    g = g.index_select(-1, iw.clamp(0, w - 1).flatten().to(dev))
    g = g.reshape(g.shape[:-1] + tuple(iw.shape)).transpose(-3, -2)  # [P, ..., oh, ow, kh, kw]
    valid = vh[:, None, :, None] & vw[None, :, None, :]
    if not bool(valid.all()):
        g = g * valid.to(dev)
        if fill and x._session.holds_first:
            g[0] += (~valid).to(dev).to(torch.int64) * fill
    return g.reshape(g.shape[:-2] + (g.shape[-2] * g.shape[-1],))


def _window_max(x: ShareTensor, win: Tensor, method: str | None = None) -> ShareTensor:
    """Shares of the max over the last dim of ``win`` (windows of ``x``), with ``method`` (default: ``maxpool_method``'s
    protocol for the window size)."""
    sess = x._session
    if (method or maxpool_method(win.shape[-1])) == "pairs":
        shares, m, frac = _fused_m(_wrap(x, win, x._frac, None))
        _, mx = P.argmax_onehot(sess, shares, m, True)
        return ShareTensor(mx, sess, frac)
    f, frac = sess.precision_bits, x._frac
    while win.shape[-1] > 1:  # pair the first half with the second: max(a, b) = b + relu(a - b)
        h = win.shape[-1] // 2
        a, b = win[..., :h], win[..., h:2 * h]
        m = frac - f if frac > f else None  # a pending product's truncation is fused into the ReLU
        r = P.relu(sess, a - b, m)
        if m:
            r = r * (1 << m)  # back to b's scale (exact)
        win = torch.cat([b + r, win[..., 2 * h:]], -1)
    return ShareTensor(win[..., 0], sess, frac)


def _no_empty_window(name: str, rows, cols) -> None:
    if not (bool(rows[1].any(-1).all()) and bool(cols[1].any(-1).all())):
        raise UnsupportedOpError(f"{name}: a window lies entirely in the padding (torch returns -inf there); use less "
                                 "padding or dilation.")


@implements(F.max_pool2d, getattr(F, "_max_pool2d", F.max_pool2d), Tensor.max_pool2d if hasattr(Tensor, "max_pool2d") else F.max_pool2d, family="pooling", limit="pairwise",
            note="A tree of pairwise maxima: ceil(log2 k) ReLU levels for k taps (of a product: each level adds "
            "up to 1 LSB of truncation error); with `LIGHTNING_SMPC_MAXPOOL=pairs`, one argmax.")
def _h_max_pool2d(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False):
    """Max pooling with any padding, stride, dilation and ``ceil_mode``: padded taps hold :func:`maxpool_fill`."""
    _pooling_input(x, "max_pool2d")
    if return_indices:
        raise UnsupportedOpError("max_pool2d(return_indices=True) on shares is not supported (the indices are secret).")
    oh, ow = _meta_shape(x, F.max_pool2d, kernel_size, stride, padding, dilation, ceil_mode)[-2:]  # torch's checks
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = _pair(kernel_size), _stride(stride, kernel_size), _pair(padding), _pair(dilation)
    h, w = _shape_of(x)[-2:]
    rows, cols = _pool_axis(h, kh, sh, ph, dh, oh), _pool_axis(w, kw, sw, pw, dw, ow)
    _no_empty_window("max_pool2d", rows, cols)
    return _window_max(x, _windows(x, rows, cols, maxpool_fill(x._session, x._frac)))


@implements(F.avg_pool2d, torch._C._nn.avg_pool2d, family="pooling",
            note="Local window sums, then a public division by torch's divisor (as `/`).")
def _h_avg_pool2d(x, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True, divisor_override=None):
    """Window sums (local) divided by torch's public divisor per window (padding counted or not, or the override)."""
    _pooling_input(x, "avg_pool2d")
    args = (kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override)
    oh, ow = _meta_shape(x, F.avg_pool2d, *args)[-2:]  # torch's checks (kernel, padding, divisor 0)
    (kh, kw), (sh, sw), (ph, pw) = _pair(kernel_size), _stride(stride, kernel_size), _pair(padding)
    h, w = _shape_of(x)[-2:]
    win = _windows(x, _pool_axis(h, kh, sh, ph, 1, oh), _pool_axis(w, kw, sw, pw, 1, ow), 0).sum(-1)
    if divisor_override is not None:
        divisor = divisor_override
    else:  # torch's own divisor per window: (its sum of ones) / (its average of ones)
        ones = torch.ones((1, 1, h, w), dtype=torch.float64)
        count = F.avg_pool2d(ones, *args[:4], divisor_override=1)
        divisor = (count / F.avg_pool2d(ones, *args[:5])).round()[0, 0]
    return _divide_public(_wrap(x, win, x._frac, None), _scalar_if_uniform(divisor))


def _scalar_if_uniform(d):
    return float(d.flatten()[0]) if isinstance(d, Tensor) and bool((d == d.flatten()[0]).all()) else d


@implements(F.adaptive_avg_pool2d, family="pooling",
            note="Local sums over torch's adaptive windows, then a public division (as `/`).")
def _h_adaptive_avg_pool2d(x, output_size):
    """Adaptive average pooling: the windows follow from the (public) input size; global pooling included."""
    _pooling_input(x, "adaptive_avg_pool2d")
    oh, ow = _meta_shape(x, F.adaptive_avg_pool2d, output_size)[-2:]
    h, w = _shape_of(x)[-2:]
    rows, cols = _adaptive_axis(h, oh), _adaptive_axis(w, ow)
    win = _windows(x, rows, cols, 0).sum(-1)
    divisor = rows[1].sum(-1)[:, None].double() * cols[1].sum(-1)[None, :].double()
    return _divide_public(_wrap(x, win, x._frac, None), _scalar_if_uniform(divisor))


@implements(F.adaptive_max_pool2d, family="pooling", limit="pairwise", note="As max_pool2d, over torch's adaptive windows.")
def _h_adaptive_max_pool2d(x, output_size, return_indices=False):
    """Adaptive max pooling; the narrower windows are filled like padding (:func:`maxpool_fill`)."""
    _pooling_input(x, "adaptive_max_pool2d")
    if return_indices:
        raise UnsupportedOpError("adaptive_max_pool2d(return_indices=True) on shares is not supported (the indices are secret).")
    oh, ow = _meta_shape(x, F.adaptive_max_pool2d, output_size)[-2:]
    h, w = _shape_of(x)[-2:]
    return _window_max(x, _windows(x, _adaptive_axis(h, oh), _adaptive_axis(w, ow), maxpool_fill(x._session, x._frac)))


@implements(F.pad, family="pooling",
            note="Local (constant, reflect, replicate, circular); a shared pad or value is refused.")
def _h_pad(x, pad, mode="constant", value=None):
    """``F.pad`` on shares, local: ``constant`` pads each share with 0 and the first party adds a nonzero public
    ``value``; ``reflect``/``replicate``/``circular`` copy input elements, so each party pads its own share row."""
    if isinstance(pad, ShareTensor) or isinstance(value, ShareTensor):
        raise UnsupportedOpError("F.pad with a secret-shared pad or value is not supported; pass public numbers.")
    _meta_shape(x, F.pad, pad, mode, value)  # torch's checks: pad length, mode, dims
    pad = tuple(int(p) for p in pad)
    sh = x._shares
    if mode == "constant":
        out = _wrap(x, F.pad(sh, pad), x._frac, None)
        if value:
            out = _add(out, F.pad(torch.zeros(_shape_of(x), dtype=torch.float64), pad, value=float(value)))
        return out
    k = len(pad) // 2  # the padded trailing dims; the leading ones (party axis included) are merged into a batch
    merged = sh.reshape((-1,) + tuple(sh.shape[sh.dim() - k:]))
    out = F.pad(merged, pad, mode=mode)
    return _wrap(x, out.reshape(tuple(sh.shape[:sh.dim() - k]) + tuple(out.shape[1:])), x._frac, None)
