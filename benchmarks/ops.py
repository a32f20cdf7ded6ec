"""Speed and memory of the PAC ops against plain convolutions of the same shape.

    python -m benchmarks.ops [--quick] [--json PATH] [--repeats N] [--only SUBSTRING]

For every case and implementation: median wall time of the forward pass and of forward +
backward (gradients for input, guidance and weight, via ``jax.vjp`` with a fixed cotangent)
after one warm-up call, XLA's compiled memory analysis (temporary bytes, forward and
forward+backward) and the peak RSS of a fresh subprocess that compiled and ran it once. Each
measurement runs in its own subprocess, so one running out of memory does not stop the rest.
The times of one case's implementations are then taken in one more subprocess, round-robin
(``--repeats`` rounds), so that the ratios to the floor compare calls made under the same
machine conditions; ``--separate`` times each implementation in its own process instead.

Implementations: ``floor`` (plain ``lax.conv_general_dilated``; depthwise for shared filters,
``lax.conv_transpose`` for the transposed case), ``fused`` (``ops.fused_*``), and the two-step
``pac_kernel`` + PAC op with ``impl`` = ``patches``, ``loop`` and ``auto`` (its
pick is shown). ``patches`` is skipped where its window tensors would not fit the memory cap.
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

# Memory ratios to the floor are only shown where the floor's temporaries are at least this.
MIN_FLOOR_TEMP = 1 << 20
# Skip an implementation when its estimated peak exceeds this (bytes); the machine is shared.
MEMORY_CAP = 3 << 29


def _cases(quick: bool):
    """``(name, spec)`` pairs; spec is JSON-serialisable."""
    cases = []
    sizes = (128,) if quick else (256, 512)
    ks = (3, 7) if quick else (3, 5, 7, 9)
    for n in sizes:
        for k in ks:
            cases.append((f"pac k={k} {n}x{n}",
                          dict(op="pac", size=[n, n], k=k, cin=16, cout=16, guide=8)))
    shape = [109, 256] if quick else [436, 1024]
    for c in (2, 21):
        cases.append((f"ppac shared 7x7 C={c} {shape[0]}x{shape[1]}",
                      dict(op="ppac", size=shape, k=7, cin=c, guide=5)))
    n = 64 if quick else 256
    cases.append((f"pac_transpose x2 k=5 {n}->{2 * n}",
                  dict(op="transpose", size=[n, n], k=5, cin=16, cout=16, guide=8)))
    return cases


IMPLS = {"pac": ("floor", "fused", "patches", "loop", "auto"),
         "ppac": ("floor", "fused", "patches", "loop", "auto"),
         "transpose": ("floor", "fused", "patches", "loop", "auto")}


def _estimate_bytes(spec, impl):
    """Rough temporary memory of forward+backward (bytes), measured at small sizes: used only
    to skip ``patches`` where they would not fit (nor finish) on big problems."""
    factor = {"patches": 5.0}.get(impl, 0.0)
    h, w = spec["size"]
    if spec["op"] == "transpose":
        h, w = 2 * h, 2 * w
    windows = h * w * spec["k"] ** 2 * (spec["cin"] + 1) * 4
    return factor * windows


# --------------------------------------------------------------------------------------------
# one measurement (runs in a subprocess)


def _build(spec, impl):
    """``(function, args, argnums, auto_pick)`` for one case and implementation."""
    import jax.numpy as jnp
    import numpy as np
    from jax import lax

    from ppac_jax import ops
    from ppac_jax.ops import pac as pac_mod

    rng = np.random.default_rng(0)

    def arr(*shape, scale=1.0, positive=False):
        a = rng.standard_normal(shape).astype(np.float32) * scale
        return jnp.asarray(np.abs(a) if positive else a)

    k = spec["k"]
    p = k // 2
    h, w = spec["size"]
    dn = ("NHWC", "HWIO", "NHWC")
    pick = None
    if spec["op"] == "pac":
        x, g = arr(1, h, w, spec["cin"]), arr(1, h, w, spec["guide"])
        wt = arr(k, k, spec["cin"], spec["cout"], scale=0.1)
        if impl == "floor":
            fn = lambda x, g, wt: lax.conv_general_dilated(x, wt, (1, 1), [(p, p)] * 2,
                                                           dimension_numbers=dn)
        elif impl == "fused":
            fn = lambda x, g, wt: ops.fused_pac_conv2d(x, g, wt, padding=p)
        else:
            def fn(x, g, wt):
                kern, _ = ops.pac_kernel(g, k, padding=p)
                return ops.pac_conv2d(x, kern, wt, padding=p, impl=impl)
            pick = pac_mod.choose_impl((1, h + 2 * p, w + 2 * p, spec["cin"]), (k, k), (h, w))
        return fn, (x, g, wt), pick
    if spec["op"] == "ppac":
        c = spec["cin"]
        x, g = arr(1, h, w, c), arr(1, h, w, spec["guide"])
        conf = jnp.asarray(rng.random((1, h, w, 1)).astype(np.float32))
        wt = arr(k, k, 1, 1, positive=True)
        wn = jnp.log(arr(k, k, 1, 1, positive=True) + 0.1)
        if impl == "floor":
            def fn(x, g, wt):
                rhs = jnp.broadcast_to(wt, (k, k, 1, c))
                return lax.conv_general_dilated(x, rhs, (1, 1), [(p, p)] * 2,
                                                dimension_numbers=dn, feature_group_count=c)
        elif impl == "fused":
            fn = lambda x, g, wt: ops.fused_prob_pac_conv2d(x, conf, g, wt, wn, padding=p,
                                                            shared_filters=True)
        else:
            def fn(x, g, wt):
                kern, _ = ops.pac_kernel(g, k, padding=p)
                return ops.prob_pac_conv2d(x, conf, kern, wt, wn, padding=p,
                                           shared_filters=True, impl=impl)
            pick = pac_mod.choose_impl((1, h + 2 * p, w + 2 * p, c), (k, k), (h, w))
        return fn, (x, g, wt), pick
    # transposed x2: k=5, stride 2, padding 2, output_padding 1 -> exactly 2h x 2w
    s, op = 2, 1
    ho, wo = 2 * h, 2 * w
    x, g = arr(1, h, w, spec["cin"]), arr(1, ho, wo, spec["guide"])
    wt = arr(k, k, spec["cin"], spec["cout"], scale=0.1)
    lo = k - 1 - p
    if impl == "floor":
        fn = lambda x, g, wt: lax.conv_transpose(x, wt, (s, s), [(lo, lo + op)] * 2,
                                                 dimension_numbers=dn)
    elif impl == "fused":
        fn = lambda x, g, wt: ops.fused_pac_conv_transpose2d(x, g, wt, stride=s, padding=p,
                                                             output_padding=op)
    else:
        def fn(x, g, wt):
            kern, _ = ops.pac_kernel(g, k, stride=s, padding=p, output_padding=op,
                                     transposed=True)
            return ops.pac_conv_transpose2d(x, kern, wt, stride=s, padding=p, output_padding=op,
                                            impl=impl)
        pick = pac_mod.choose_impl((1, ho + k - 1, wo + k - 1, spec["cin"]), (k, k), (ho, wo))
    return fn, (x, g, wt), pick


def _fwd_bwd(fn, args, impl):
    """Forward and gradients (input, guidance unless ``floor``, weight) with a fixed cotangent."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    argnums = (0, 2) if impl == "floor" else (0, 1, 2)
    y_shape = jax.eval_shape(fn, *args)
    cot = jnp.asarray(np.random.default_rng(1).standard_normal(y_shape.shape).astype(np.float32))

    def fwd_bwd(*a):
        def f(*diff):
            full = list(a)
            for i, v in zip(argnums, diff):
                full[i] = v
            return fn(*full)
        y, vjp = jax.vjp(f, *[a[i] for i in argnums])
        return y, vjp(cot)
    return fwd_bwd


def _measure(spec, impl, repeats):
    import jax
    import numpy as np

    fn, args, pick = _build(spec, impl)
    result = {}
    for label, f in (("fwd", jax.jit(fn)), ("fwd_bwd", jax.jit(_fwd_bwd(fn, args, impl)))):
        t0 = time.perf_counter()
        compiled = f.lower(*args).compile()
        result[f"compile_{label}_s"] = time.perf_counter() - t0
        mem = compiled.memory_analysis()
        result[f"temp_{label}_bytes"] = int(mem.temp_size_in_bytes) if mem is not None else None
        if mem is not None:
            # arguments + outputs + temporaries: everything the program holds at its peak
            result[f"total_{label}_bytes"] = int(mem.argument_size_in_bytes
                                                 + mem.output_size_in_bytes
                                                 + mem.temp_size_in_bytes)
        if not repeats:
            continue
        jax.block_until_ready(compiled(*args))          # warm-up
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            jax.block_until_ready(compiled(*args))
            times.append(time.perf_counter() - t0)
        result[f"{label}_s"] = float(np.median(times))
    if not repeats:
        result.update(fwd_s=None, fwd_bwd_s=None)
    result["auto_pick"] = pick
    result["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return result


# --------------------------------------------------------------------------------------------
# driver


def _time_interleaved(spec, impls, rounds):
    """Median fwd and fwd+bwd seconds of several implementations of one case, timed in
    round-robin in one process: every ratio then compares calls made under the same machine
    conditions (this VM's speed drifts by 2x over minutes, which skews ratios of measurements
    taken one after the other)."""
    import jax
    import numpy as np

    compiled = {}
    for impl in impls:
        fn, args, _ = _build(spec, impl)
        fwd_bwd = _fwd_bwd(fn, args, impl)
        for label, f in (("fwd", fn), ("fwd_bwd", fwd_bwd)):
            c = jax.jit(f).lower(*args).compile()
            jax.block_until_ready(c(*args))          # warm-up
            compiled[impl, label] = (c, args)
    times = {key: [] for key in compiled}
    keys = list(compiled)
    for r in range(rounds):
        for key in keys[r % len(keys):] + keys[:r % len(keys)]:
            c, args = compiled[key]
            t0 = time.perf_counter()
            jax.block_until_ready(c(*args))
            times[key].append(time.perf_counter() - t0)
    return {impl: {f"{label}_s": float(np.median(times[impl, label]))
                   for label in ("fwd", "fwd_bwd")} for impl in impls}


def _run_timing(spec, impls, rounds, timeout):
    return _run_subprocess(["--_timing", json.dumps([spec, impls, rounds])], timeout)


def _run_one(spec, impl, repeats, timeout):
    return _run_subprocess(["--_one", json.dumps([spec, impl, repeats])], timeout)


def _run_subprocess(arguments, timeout):
    cmd = [sys.executable, "-m", "benchmarks.ops", *arguments]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timeout after {timeout}s"}
    for line in proc.stdout.splitlines()[::-1]:
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
    return {"error": f"exit {proc.returncode}: {tail[0][:200]}"}


def _fmt_s(v):
    return "-" if v is None else f"{v:.3f}"


def _fmt_mb(v):
    return "-" if v is None else f"{v / 2 ** 20:.0f}"


def format_table(rows):
    head = ("| case | impl | fwd s | fwd+bwd s | x floor | temp fwd MB | temp f+b MB | x floor mem "
            "| total f+b MB | x floor total | peak RSS MB |")
    lines = [head, "|" + "---|" * 11]
    floor_temp = {row["case"]: row["result"].get("temp_fwd_bwd_bytes") or 0 for row in rows
                  if row["impl"] == "floor"}
    floor_total = {row["case"]: row["result"].get("total_fwd_bwd_bytes") for row in rows
                   if row["impl"] == "floor"}
    for row in rows:
        r = row["result"]
        if "error" in r or "skipped" in r:
            lines.append(f"| {row['case']} | {row['impl']} | {r.get('error') or r['skipped']} "
                         f"| | | | | | | | |")
            continue
        impl = row["impl"] + (f" ({r['auto_pick']})" if row["impl"] == "auto" else "")
        ratio = r.get("ratio_floor")
        total = None
        if r.get("total_fwd_bwd_bytes") and floor_total.get(row["case"]):
            total = r["total_fwd_bwd_bytes"] / floor_total[row["case"]]
        mem_ratio = r.get("mem_ratio_floor")
        if floor_temp.get(row["case"], 0) < MIN_FLOOR_TEMP:
            mem_ratio = None        # the floor needs (almost) no temporaries: no ratio
        lines.append(
            f"| {row['case']} | {impl} | {_fmt_s(r['fwd_s'])} | {_fmt_s(r['fwd_bwd_s'])} | "
            f"{'-' if ratio is None else f'{ratio:.2f}'} | {_fmt_mb(r['temp_fwd_bytes'])} | "
            f"{_fmt_mb(r['temp_fwd_bwd_bytes'])} | "
            f"{'-' if mem_ratio is None else f'{mem_ratio:.2f}'} | "
            f"{_fmt_mb(r.get('total_fwd_bwd_bytes'))} | "
            f"{'-' if total is None else f'{total:.2f}'} | {_fmt_mb(r['peak_rss_bytes'])} |")
    return "\n".join(lines)


def check_targets(rows):
    """The issue's targets, evaluated on measured rows: list of ``(target, value, met)``."""
    res = {(r["case"], r["impl"]): r["result"] for r in rows}
    out = []

    def get(case, impl, key):
        return res.get((case, impl), {}).get(key)

    for (case, impl), r in res.items():
        spec = next(row["spec"] for row in rows if row["case"] == case)
        floor_total = get(case, "floor", "total_fwd_bwd_bytes")
        if impl == "fused" and r.get("total_fwd_bwd_bytes") and floor_total \
                and spec["op"] == "pac" and spec["size"][0] >= 512:
            ratio = r["total_fwd_bwd_bytes"] / floor_total
            out.append((f"{case}: fused total (args+outputs+temp) f+b <= 2x floor", ratio,
                        ratio <= 2))
        if impl == "fused" and r.get("ratio_floor") is not None:
            if spec["op"] == "pac" and spec["k"] in (5, 7) and spec["size"][0] >= 256:
                out.append((f"{case}: fused f+b <= 3x floor", r["ratio_floor"],
                            r["ratio_floor"] <= 3))
            if spec["op"] == "ppac" and spec["size"][0] >= 436:
                out.append((f"{case}: fused f+b <= 3x depthwise floor", r["ratio_floor"],
                            r["ratio_floor"] <= 3))
            floor_temp = get(case, "floor", "temp_fwd_bwd_bytes") or 0
            if spec["op"] == "pac" and spec["size"][0] >= 512 and floor_temp >= MIN_FLOOR_TEMP:
                out.append((f"{case}: fused temp f+b <= 2x floor", r["mem_ratio_floor"],
                            r["mem_ratio_floor"] <= 2))
            two = get(case, "auto", "fwd_bwd_s")
            if two is not None and r.get("fwd_bwd_s"):
                ratio = two / r["fwd_bwd_s"]
                if spec["op"] == "ppac":
                    # The two-step target names pac_kernel + pac_conv2d; the PPAC
                    # layer's two-step (prob_pac_conv2d) is reported, not judged.
                    out.append((f"{case}: two-step (auto) f+b / fused (reported)", ratio, None))
                else:
                    out.append((f"{case}: two-step (auto) f+b <= 1.5x fused", ratio,
                                ratio <= 1.5))
    for n in sorted({tuple(row["spec"]["size"]) for row in rows if row["spec"]["op"] == "pac"}):
        small = get(f"pac k=3 {n[0]}x{n[1]}", "fused", "temp_fwd_bwd_bytes")
        large = get(f"pac k=9 {n[0]}x{n[1]}", "fused", "temp_fwd_bwd_bytes")
        if small and large:
            out.append((f"pac {n[0]}x{n[1]}: fused temp f+b k=9 <= 1.2x k=3", large / small,
                        large / small <= 1.2))
    return out


def format_targets(targets):
    lines = ["| target | measured | met |", "|---|---|---|"]
    met = {True: "yes", False: "NO", None: "-"}
    lines += [f"| {t} | {v:.2f} | {met[ok]} |" for t, v, ok in targets]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small shapes, one repeat")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed calls per measurement (0: compile and memory analysis only)")
    parser.add_argument("--json", default="benchmarks/results_ops.json", help="output JSON path")
    parser.add_argument("--only", default=None, help="run only cases whose name contains one of these (comma-separated)")
    parser.add_argument("--impls", default=None, help="comma-separated implementations")
    parser.add_argument("--timeout", type=int, default=900, help="seconds per measurement")
    parser.add_argument("--render", default=None, metavar="JSON",
                        help="print the tables of a previous run's JSON and exit")
    parser.add_argument("--separate", action="store_true",
                        help="time each implementation in its own process, one after the other "
                             "(default: interleaved in one process per case)")
    parser.add_argument("--_one", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--_timing", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.render is not None:
        with open(args.render, encoding="utf-8-sig") as fh:
            rows = json.load(fh)["rows"]
        print(format_table(rows))
        print()
        print(format_targets(check_targets(rows)))
        return

    if args._one is not None:
        spec, impl, repeats = json.loads(args._one)
        print("RESULT " + json.dumps(_measure(spec, impl, repeats)), flush=True)
        return

    if args._timing is not None:
        spec, impls, rounds = json.loads(args._timing)
        print("RESULT " + json.dumps(_time_interleaved(spec, impls, rounds)), flush=True)
        return

    repeats = args.repeats if args.repeats is not None else (1 if args.quick else 5)
    interleaved = not args.separate and repeats > 0
    wanted = None if args.impls is None else set(args.impls.split(","))
    rows = []
    for name, spec in _cases(args.quick):
        if args.only and not any(part in name for part in args.only.split(",")):
            continue
        impls = [impl for impl in IMPLS[spec["op"]]
                 if not wanted or impl in wanted or impl == "floor"]
        results = {}
        for impl in impls:
            if _estimate_bytes(spec, impl) > MEMORY_CAP:
                results[impl] = {"skipped": "skipped (window tensors over the memory cap)"}
            else:
                # Memory analysis and peak RSS in a fresh process (one timed call with
                # interleaved timing, which replaces its times below).
                results[impl] = _run_one(spec, impl, 1 if interleaved else repeats, args.timeout)
        if interleaved:
            timed = [impl for impl in impls if "fwd_s" in results[impl]]
            times = _run_timing(spec, timed, repeats, args.timeout) if timed else {}
            for impl in timed:
                if "error" in times:
                    results[impl]["timing"] = "separate (interleaved run failed: %s)" % times["error"]
                else:
                    results[impl].update(times[impl], timing="interleaved")
        floor = None
        for impl in impls:
            result = results[impl]
            if impl == "floor" and "error" not in result:
                floor = result
            if floor is not None and result.get("fwd_bwd_s") is not None:
                result["ratio_floor"] = result["fwd_bwd_s"] / floor["fwd_bwd_s"]
            if floor is not None and result.get("total_fwd_bwd_bytes"):
                result["total_ratio_floor"] = (result["total_fwd_bwd_bytes"]
                                               / floor["total_fwd_bwd_bytes"])
                if floor.get("temp_fwd_bwd_bytes"):
                    result["mem_ratio_floor"] = (result["temp_fwd_bwd_bytes"]
                                                 / floor["temp_fwd_bwd_bytes"])
            rows.append(dict(case=name, spec=spec, impl=impl, result=result))
            print(f"{name:40s} {impl:8s} "
                  + (json.dumps({k: v for k, v in result.items() if not k.startswith("compile")})),
                  flush=True)
    table = format_table(rows)
    print()
    print(table)
    print()
    print(format_targets(check_targets(rows)))
    meta = dict(machine=platform.platform(), processor=platform.processor(),
                cpu_count=os.cpu_count(), python=platform.python_version(),
                time=time.strftime("%Y-%m-%d %H:%M:%S"), command=" ".join(sys.argv),
                load_average=os.getloadavg())
    try:
        import jax
        meta.update(jax=jax.__version__, backend=jax.default_backend())
    except Exception:  # pragma: no cover - reporting only
        pass
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(dict(meta=meta, rows=rows), fh, indent=1)
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
