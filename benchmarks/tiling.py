"""Strip-height sweep of the tap-loop engine: fused PAC forward+backward per ``Tiling``.

    python -m benchmarks.tiling [--k 7] [--size 512] [--rows 8,16,32,64] [--groups 0]

Prints, for a dense fused PAC (16 -> 16 channels, 8 guidance channels, batch 1, float32), the
best forward+backward time of the default tiling (``ops.tiling.choose_tiling``) and of each
``Tiling(rows=..., group=...)``, next to the plain convolution of the same shape. Use it to
check the strip constants of ``ppac_jax/ops/tiling.py`` on a new kind of machine: each strip
runs every tap's small XLA kernels, whose fixed launch cost differs between CPUs.
"""

from __future__ import annotations

import argparse

from benchmarks.kernel import _best


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--k", type=int, default=7, help="kernel size")
    parser.add_argument("--size", type=int, default=512, help="image height and width")
    parser.add_argument("--rows", default="8,16,32,64", help="strip heights to try")
    parser.add_argument("--groups", default="0", help="taps per step to try (0: default)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)

    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax import lax

    from ppac_jax import ops
    from ppac_jax.ops.tiling import Tiling, choose_tiling

    k, n, pad = args.k, args.size, args.k // 2
    rng = np.random.default_rng(0)
    arr = lambda *shape: jnp.asarray(rng.standard_normal(shape).astype(np.float32))
    x, guide, weight, cot = arr(1, n, n, 16), arr(1, n, n, 8), arr(k, k, 16, 16), arr(1, n, n, 16)

    def fwd_bwd(fn):
        def run(x, guide, weight):
            y, vjp = jax.vjp(fn, x, guide, weight)
            return y, vjp(cot)
        return jax.jit(run)

    floor = fwd_bwd(lambda x, guide, weight: lax.conv_general_dilated(
        x, weight, (1, 1), [(pad, pad)] * 2, dimension_numbers=("NHWC", "HWIO", "NHWC")))
    base = _best(floor, (x, guide, weight), args.repeats)
    print(f"{jax.devices()[0].device_kind}, k={k}, {n}x{n}: plain conv f+b {base * 1e3:.1f} ms")
    default = choose_tiling("sum", batch=1, out_size=(n, n), channels=16, guide_channels=8,
                            dense=True)
    tilings = [None] + [Tiling(rows=int(r), group=int(g)) for r in args.rows.split(",")
                        for g in args.groups.split(",") if 2 * int(r) <= n]
    for tiling in tilings:
        fn = fwd_bwd(lambda x, guide, weight, t=tiling: ops.fused_pac_conv2d(
            x, guide, weight, padding=pad, tiling=t))
        took = _best(fn, (x, guide, weight), args.repeats)
        shown = default if tiling is None else tiling
        label = f"{'default: ' if tiling is None else ''}rows={shown.rows} group={shown.group}"
        print(f"  {label:40s} fused f+b {took * 1e3:8.1f} ms  {took / base:5.2f}x floor",
              flush=True)


if __name__ == "__main__":
    main()
