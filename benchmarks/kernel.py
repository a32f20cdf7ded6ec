"""Speed of ``ops.pac_kernel`` alone: forward, and forward + backward via ``jax.vjp``.

    python -m benchmarks.kernel [--only SUBSTRING[,SUBSTRING]] [--repeats N]

Prints the best wall time of each (after one warm-up call) for the guide shapes of the ops
benchmark (``benchmarks.ops``). On a machine where fresh large buffers are slow to fault in,
the forward time is dominated by writing the ``[B, Ho, Wo, kh, kw]`` result (try
``GLIBC_TUNABLES=glibc.malloc.hugetlb=1`` to see the difference).
"""

from __future__ import annotations

import argparse
import time

CASES = {
    "pac k=9 256x256 D=8": dict(shape=(1, 256, 256, 8), k=9, options=dict(padding=4)),
    "pac k=9 512x512 D=8": dict(shape=(1, 512, 512, 8), k=9, options=dict(padding=4)),
    "ppac 7x7 436x1024 D=5": dict(shape=(1, 436, 1024, 5), k=7, options=dict(padding=3)),
    "transposed x2 k=5 512x512 D=8": dict(
        shape=(1, 512, 512, 8), k=5,
        options=dict(stride=2, padding=2, output_padding=1, transposed=True)),
    "inv asym stride 2 k=5 256x256 D=8": dict(
        shape=(1, 256, 256, 8), k=5,
        options=dict(stride=2, padding=2, kernel_type="inv", asym=True, inv_alpha=0.3,
                     inv_lambda=0.4)),
}


def _best(fn, args, repeats):
    import jax
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return min(times)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default=None, help="comma-separated substrings of case names")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)

    import jax
    import jax.numpy as jnp
    import numpy as np

    from ppac_jax import ops

    rng = np.random.default_rng(0)
    for name, case in CASES.items():
        if args.only and not any(part in name for part in args.only.split(",")):
            continue
        guide = jnp.asarray(rng.standard_normal(case["shape"]).astype(np.float32))

        def kernel(g, case=case):
            return ops.pac_kernel(g, case["k"], **case["options"])[0]

        cot = jnp.asarray(rng.standard_normal(jax.eval_shape(kernel, guide).shape)
                          .astype(np.float32))
        forward = jax.jit(kernel)
        def forward_backward(g, ct, kernel=kernel):
            y, vjp = jax.vjp(kernel, g)
            return y, vjp(ct)

        forward_backward = jax.jit(forward_backward)
        fwd = _best(forward, (guide,), args.repeats)
        both = _best(forward_backward, (guide, cot), args.repeats)
        print(f"{name:36s} fwd {fwd * 1e3:8.1f} ms   fwd+bwd {both * 1e3:8.1f} ms", flush=True)


if __name__ == "__main__":
    main()
