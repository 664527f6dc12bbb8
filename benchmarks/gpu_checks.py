"""Correctness of the attention op's three paths on the device JAX sees.

`keras_attention.ops.scaled_dot_product_attention` runs with
`chunk_size=None` (our dense kernel), an int `chunk_size` (our chunked
kernel) and `"auto"` (on JAX with a GPU or TPU, the fused kernel for the calls
it can take), in bfloat16 and float32, with and without `is_causal`, without a
mask, with a left-padding key mask, and with a random `(batch, 1, q, k)` mask
in which some query rows are fully masked. Each call is compared with the
float64 NumPy reference (`tests/reference.py`) on the same, dtype-rounded
inputs; a query row with no key to attend must be exactly zero on every path,
and so must its gradient; the gradients of every path are compared with our
dense kernel's in float32.

Which path ran is recorded by wrapping `keras_attention.ops._backend.
fused_attention` (the function the fused path calls) with a counter. The
expected choice is the rule of `scaled_dot_product_attention` with
`flash_attention=None`: only `chunk_size="auto"` may go fused, on JAX with a
GPU (float16 or bfloat16 inputs) or a TPU, here where no scores, dropout,
bias or soft-cap are asked for and masks are static and of rank 4; an int or
`None` always means our kernels. On a CPU the fused kernel never runs.

Tolerances (elementwise `|out - ref| <= atol + rtol * |ref|`; gradients:
max difference / max magnitude of the float32 dense gradient):
    float32 on a CPU: 1e-5 (gradients 1e-4).
    float32 on a GPU or TPU: 2e-3 (gradients 5e-3); XLA's default precision
        lets float32 matmuls run in TF32 (GPU) or bfloat16 passes (TPU).
    bfloat16: 2e-2 (gradients 5e-2): 8 significant bits in the inputs, the
        weights before the value product and the output.

Usage (JAX only; no TensorFlow, no pytest):
    python benchmarks/gpu_checks.py --out gpu-checks.json
    python benchmarks/gpu_checks.py --smoke     # small shapes, a CPU is fine

Exits 1 if any check fails. Writes a JSON report with every case.
"""

import argparse
import importlib.util
import json
import os
import sys
import time

os.environ["KERAS_BACKEND"] = "jax"  # before keras: this script is JAX-only
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks._common import jax_versions  # noqa: E402
from keras_attention.ops import _backend  # noqa: E402
from keras_attention.ops import _fused  # noqa: E402
from keras_attention.ops import scaled_dot_product_attention  # noqa: E402


def _load_reference():
    """`tests/reference.py` by path (no `tests` package needed)."""
    path = os.path.join(ROOT, "tests", "reference.py")
    spec = importlib.util.spec_from_file_location("ka_reference", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


reference = _load_reference()


class FusedCounter:
    """Replaces `_backend.fused_attention` with a wrapper that counts its calls
    (traces, under `jax.grad` or `jax.jit`) and calls through."""

    def __init__(self):
        self.calls = 0
        self.original = _backend.fused_attention

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.original(*args, **kwargs)

    def __enter__(self):
        _backend.fused_attention = self
        return self

    def __exit__(self, *exc):
        _backend.fused_attention = self.original


def tolerances(dtype, platform_):
    """`(atol = rtol, gradient tolerance)` for a dtype on a platform."""
    if dtype in ("bfloat16", "float16"):
        return 2e-2, 5e-2
    if platform_ == "cpu":
        return 1e-5, 1e-4
    return 2e-3, 5e-3


def expected_fused(chunk_size, dtype, environment):
    """Whether the fused kernel should take the call (see the docstring)."""
    backend, platform_ = environment
    if chunk_size != "auto":
        return False
    if backend != "jax" or platform_ not in ("gpu", "tpu"):
        return False
    if keras.config.is_flash_attention_enabled() is False:
        return False
    dtypes = ("float16", "bfloat16")
    if platform_ == "tpu":
        dtypes += ("float32",)
    return dtype in dtypes


def make_inputs(shape, seed=0):
    """Float32 query, key, value `(batch, length, heads, dim)`."""
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(shape).astype("float32") for _ in range(3)]


def make_mask(kind, batch, length, seed=1):
    """None, a left-padding key mask `(batch, 1, 1, k)` (the second
    sequence's first quarter is padding), or a random `(batch, 1, q, k)`
    mask whose rows 0 and q // 2 are fully masked."""
    if kind == "none":
        return None
    if kind == "padding":
        mask = np.ones((batch, 1, 1, length), bool)
        mask[1:, :, :, : length // 4] = False
        return mask
    rng = np.random.default_rng(seed)
    mask = rng.random((batch, 1, length, length)) < 0.75
    mask[:, :, [0, length // 2], :] = False
    return mask


def empty_rows(mask, causal, batch, heads, length):
    """Boolean `(batch, q, heads)`: query rows with no key to attend."""
    full = np.ones((batch, heads, length, length), bool)
    if mask is not None:
        full &= np.broadcast_to(mask, full.shape)
    if causal:
        full &= np.tril(np.ones((length, length), bool))
    return np.transpose(~full.any(-1), (0, 2, 1))


# Float32 gradients of our dense kernel, by (dtype, mask, causal).
_DENSE_GRADS = {}


def run_case(case, inputs, mask, environment, counter):
    dtype, chunk_size, causal = (
        case["dtype"],
        case["chunk_size"],
        case["causal"],
    )
    platform_ = environment[1]
    q, k, v = (jnp.asarray(x, dtype) for x in inputs)
    batch, length, heads, _ = q.shape
    mask_arg = None if mask is None else jnp.asarray(mask)

    def attend(q, k, v, chunk=chunk_size):
        return scaled_dot_product_attention(
            q, k, v, mask=mask_arg, is_causal=causal, chunk_size=chunk
        )

    before = counter.calls
    out = np.asarray(attend(q, k, v).astype("float32"))
    case["fused_calls"] = counter.calls - before
    case["expected_fused"] = expected_fused(chunk_size, dtype, environment)
    case["ok_path"] = (case["fused_calls"] > 0) == case["expected_fused"]

    # The reference sees the same (rounded) inputs, in float64.
    q64, k64, v64 = (
        np.asarray(x.astype("float32"), np.float64) for x in (q, k, v)
    )
    ref, _ = reference.sdpa(q64, k64, v64, mask=mask, is_causal=causal)
    atol, grad_tol = tolerances(dtype, platform_)
    error = np.abs(out - ref)
    case["max_abs_err"] = float(error.max())
    case["tolerance"] = atol
    case["finite"] = bool(np.isfinite(out).all())
    case["ok_values"] = case["finite"] and bool(
        np.all(error <= atol + atol * np.abs(ref))
    )
    rows = empty_rows(mask, causal, batch, heads, length)
    case["empty_rows"] = int(rows.sum())
    case["ok_zero_rows"] = bool(np.all(out[rows] == 0.0))

    # Gradients: weighted sum of the output, against our dense kernel in
    # float32 on the same rounded inputs.
    weights = jnp.asarray(
        np.random.default_rng(2).standard_normal(out.shape), "float32"
    )

    def loss(q, k, v, chunk=chunk_size):
        return jnp.sum(attend(q, k, v, chunk).astype("float32") * weights)

    before = counter.calls
    grads = jax.grad(loss, argnums=(0, 1, 2))(q, k, v)
    case["fused_calls_grad"] = counter.calls - before
    grads = [np.asarray(g.astype("float32")) for g in grads]
    key = (dtype, case["mask"], causal)
    if key not in _DENSE_GRADS:  # the same for the three paths
        q32, k32, v32 = (x.astype("float32") for x in (q, k, v))
        dense = jax.grad(lambda *a: loss(*a, chunk=None), argnums=(0, 1, 2))(
            q32, k32, v32
        )
        _DENSE_GRADS[key] = [np.asarray(g) for g in dense]
    dense = _DENSE_GRADS[key]
    case["grad_rel_err"] = float(
        max(
            np.abs(g - d).max() / max(np.abs(d).max(), 1e-12)
            for g, d in zip(grads, dense)
        )
    )
    case["grad_tolerance"] = grad_tol
    case["grads_finite"] = all(bool(np.isfinite(g).all()) for g in grads)
    case["ok_grads"] = case["grads_finite"] and case["grad_rel_err"] <= grad_tol
    case["ok_zero_row_grads"] = bool(np.all(grads[0][rows] == 0.0))
    case["passed"] = all(
        case[name]
        for name in (
            "ok_path",
            "ok_values",
            "ok_zero_rows",
            "ok_grads",
            "ok_zero_row_grads",
        )
    )
    return case


def cases(smoke, chunk):
    """Every (path, dtype, causal, mask) combination; `smoke` keeps two
    (mask, causal) pairs per path and dtype."""
    pairs = [
        (mask, causal)
        for mask in ("none", "padding", "rows")
        for causal in (False, True)
    ]
    if smoke:  # both kinds of fully masked rows, causal and not
        pairs = [("padding", True), ("rows", False)]
    for path, chunk_size in (
        ("dense", None),
        ("chunked", chunk),
        ("auto", "auto"),
    ):
        for dtype in ("bfloat16", "float32"):
            for mask, causal in pairs:
                yield dict(
                    path=path,
                    chunk_size=chunk_size,
                    dtype=dtype,
                    causal=causal,
                    mask=mask,
                )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="small shapes and fewer combinations (seconds on a CPU)",
    )
    parser.add_argument("--out", default=None, help="the JSON report's path")
    args = parser.parse_args(argv)

    start = time.time()
    environment = _fused.environment()
    device = jax.devices()[0]
    if args.smoke:
        batch, length, heads, dim, chunk = 2, 32, 2, 16, 8
    else:
        # Lengths and head size that cuDNN's flash attention takes.
        batch, length, heads, dim, chunk = 2, 256, 4, 64, 64
    inputs = make_inputs((batch, length, heads, dim))
    masks = {
        kind: make_mask(kind, batch, length)
        for kind in ("none", "padding", "rows")
    }
    results = []
    with FusedCounter() as counter:
        for case in cases(args.smoke, chunk):
            try:
                run_case(
                    case, inputs, masks[case["mask"]], environment, counter
                )
            except Exception as error:
                case["passed"] = False
                case["error"] = f"{type(error).__name__}: {error}"[-500:]
            results.append(case)
            print(
                f"{'ok  ' if case['passed'] else 'FAIL'} {case['path']:7s} "
                f"{case['dtype']:8s} causal={case['causal']!s:5s} "
                f"mask={case['mask']:7s} fused={case.get('fused_calls')} "
                f"(expected {case.get('expected_fused')}) max err "
                f"{case.get('max_abs_err', float('nan')):.2e} grad err "
                f"{case.get('grad_rel_err', float('nan')):.2e}"
                + (f" {case['error']}" if "error" in case else ""),
                flush=True,
            )
    failed = [c for c in results if not c["passed"]]
    report = dict(
        passed=not failed,
        cases=len(results),
        failed=len(failed),
        fused_cases=sum(1 for c in results if c.get("fused_calls")),
        expected_fused_cases=sum(1 for c in results if c.get("expected_fused")),
        backend=environment[0],
        platform=environment[1],
        device=f"{device.device_kind} ({device.platform}, "
        f"{jax.device_count()} device(s))",
        versions=jax_versions(),
        command="python benchmarks/gpu_checks.py"
        + (" --smoke" if args.smoke else ""),
        shape=dict(batch=batch, length=length, heads=heads, dim=dim),
        chunk_size=chunk,
        tolerances={
            dtype: dict(
                zip(
                    ("atol_rtol", "gradients"),
                    tolerances(dtype, environment[1]),
                )
            )
            for dtype in ("bfloat16", "float32")
        },
        seconds=time.time() - start,
        results=results,
    )
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)
    print(
        f"gpu_checks: {len(results) - len(failed)}/{len(results)} passed on "
        f"{report['device']}; fused kernel ran in {report['fused_cases']} "
        f"cases (expected {report['expected_fused_cases']}); "
        f"{report['seconds']:.0f} s"
    )
    return 0 if not failed else 1


if __name__ == "__main__":
    sys.exit(main())
