"""PAC-CRF vs DenseCRF: speed and memory on this machine.

PacCRF in the paper's configuration (21 labels, 5 mean-field steps, two 5x5 ``4d`` pairwise
terms with dilations 16 and 64, RGB edge features), forward and forward+backward, against
DenseCRF (``pydensecrf2``, optional: ``pip install ppac-jax[bench]``; 5 iterations, Gaussian +
bilateral kernels). Every measurement runs in its own subprocess so that its peak memory
(max RSS) is its own.

    python -m benchmarks.crf                      # 256 and 512, prints a table
    python -m benchmarks.crf --sizes 512 --repeats 2 --write benchmarks/CRF_RESULTS.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

# Numbers quoted in the issue for this kind of machine (2 CPU cores), for context only.
REFERENCE_SECONDS = {
    ("original PyTorch PAC-CRF", 256): "4.95 s",
    ("original PyTorch PAC-CRF", 512): "14.5 s (13 GB)",
    ("DenseCRF", 256): "0.31 s",
    ("DenseCRF", 512): "1.55 s",
}
CLASSES = 21
STEPS = 5


def _inputs(size, seed=0):
    import numpy as np
    rng = np.random.default_rng(seed)
    # a piecewise-constant image with noise, and noisy logits that roughly follow it
    blocks = rng.integers(0, 256, (1, size // 32 + 1, size // 32 + 1, 3))
    image = np.repeat(np.repeat(blocks, 32, 1), 32, 2)[:, :size, :size].astype(np.float32)
    image = np.clip(image + rng.normal(0, 8, image.shape), 0, 255).astype(np.float32)
    labels = (image[..., 0] * CLASSES / 256).astype(np.int64)
    logits = rng.normal(0, 1.0, (1, size, size, CLASSES)).astype(np.float32)
    logits += 2.0 * np.eye(CLASSES, dtype=np.float32)[labels]
    return image, logits


def _max_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run_paccrf(size, backward, repeats):
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from ppac_jax.nn.crf import PacCRF

    image, logits = _inputs(size)
    crf = PacCRF(CLASSES, STEPS, pairwise_kernels=[
        dict(kernel_size=5, dilation=16, compat_type="4d"),
        dict(kernel_size=5, dilation=64, compat_type="4d")])
    graphdef, params, rest = nnx.split(crf, nnx.Param, ...)
    unary = jnp.asarray(logits)
    edges = jnp.asarray(image / 255.0 * 8.0)  # RGB edge features (colour bandwidth 255/8)

    def forward(params, unary, edges):
        return nnx.merge(graphdef, params, rest)(unary, edges)

    if backward:
        cot = jnp.asarray(jax.random.normal(jax.random.key(1), unary.shape, unary.dtype))

        def fn(params, unary, edges):
            out, vjp = jax.vjp(lambda p, u: forward(p, u, edges), params, unary)
            return out, vjp(cot)
    else:
        fn = forward
    t0 = time.perf_counter()
    compiled = jax.jit(fn).lower(params, unary, edges).compile()
    compile_s = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    xla_mb = None
    if mem is not None:
        xla_mb = (mem.temp_size_in_bytes + mem.argument_size_in_bytes
                  + mem.output_size_in_bytes) / 2 ** 20
    jax.block_until_ready(compiled(params, unary, edges))
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(compiled(params, unary, edges))
        times.append(time.perf_counter() - t)
    return dict(seconds=min(times), compile_s=compile_s, xla_mb=xla_mb, rss_mb=_max_rss_mb())


def run_densecrf(size, repeats):
    import numpy as np
    try:
        import pydensecrf.densecrf as dcrf
    except ImportError:
        return None
    image, logits = _inputs(size)
    img = np.ascontiguousarray(image[0].astype(np.uint8))
    z = logits[0] - logits[0].max(-1, keepdims=True)
    neg_log_p = -(z - np.log(np.exp(z).sum(-1, keepdims=True)))
    unary = np.ascontiguousarray(neg_log_p.reshape(-1, CLASSES).T.astype(np.float32))
    times = []
    for _ in range(repeats + 1):
        t = time.perf_counter()
        d = dcrf.DenseCRF2D(size, size, CLASSES)
        d.setUnaryEnergy(unary)
        d.addPairwiseGaussian(sxy=3, compat=3)
        d.addPairwiseBilateral(sxy=80, srgb=13, rgbim=img, compat=10)
        np.asarray(d.inference(STEPS))
        times.append(time.perf_counter() - t)
    return dict(seconds=min(times[1:]), rss_mb=_max_rss_mb())


def _child(args):
    if args.one == "densecrf":
        result = run_densecrf(args.size, args.repeats)
    else:
        result = run_paccrf(args.size, args.one == "fwdbwd", args.repeats)
    print("RESULT " + json.dumps(result))


def _spawn(kind, size, repeats):
    cmd = [sys.executable, "-m", "benchmarks.crf", "--one", kind, "--size", str(size),
           "--repeats", str(repeats)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["?"]
    return {"error": tail[0]}


def _fmt(result):
    if result is None:
        return "unavailable (pip install pydensecrf2)", "", ""
    if "error" in result:
        return f"failed: {result['error'][:60]}", "", ""
    mem = f"{result['rss_mb']:.0f} MB RSS"
    if result.get("xla_mb") is not None:
        mem += f" (XLA buffers {result['xla_mb']:.0f} MB)"
    comp = f"{result['compile_s']:.1f} s" if "compile_s" in result else ""
    return f"{result['seconds']:.3f} s", mem, comp


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-backward", action="store_true", help="skip forward+backward")
    parser.add_argument("--write", help="also write the table (markdown) to this file")
    parser.add_argument("--one", choices=["fwd", "fwdbwd", "densecrf"], help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        return _child(args)

    rows = []
    for size in args.sizes:
        kinds = [("PacCRF forward", "fwd")]
        if not args.no_backward:
            kinds.append(("PacCRF forward+backward", "fwdbwd"))
        kinds.append(("DenseCRF (pydensecrf2) forward", "densecrf"))
        for label, kind in kinds:
            result = _spawn(kind, size, args.repeats)
            if kind == "densecrf" and result is not None and not result:
                result = None
            rows.append((f"{size}²", label, *_fmt(result)))
            print(" | ".join(rows[-1]), flush=True)
        for (name, s), value in REFERENCE_SECONDS.items():
            if s == size:
                rows.append((f"{size}²", f"{name} (quoted in the issue, not measured)", value,
                             "", ""))
    header = ("size", "method", "time (best of repeats)", "peak memory", "compile")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    machine = (f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, "
               f"Python {platform.python_version()}")
    table = "\n".join(lines)
    print()
    print(table)
    if args.write:
        cmd = "python -m benchmarks.crf " + " ".join(a for a in (argv or sys.argv[1:]))
        with open(args.write, "w", encoding="utf-8") as f:
            f.write(f"# PAC-CRF benchmark\n\nCommand: `{cmd}`\n\nMachine: {machine}\n\n"
                    f"Configuration: {CLASSES} labels, {STEPS} mean-field steps, two 5x5 `4d` "
                    f"terms (dilation 16 and 64), RGB edge features, batch 1, float32. "
                    f"DenseCRF: 5 iterations, Gaussian (sxy 3, compat 3) + bilateral (sxy 80, "
                    f"srgb 13, compat 10).\n\n{table}\n")


if __name__ == "__main__":
    main()
