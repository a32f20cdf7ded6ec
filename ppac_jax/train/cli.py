"""The command line every experiment shares: presets, config overrides and run flags.

An experiment is a package ``experiments/<name>/`` with ``configs/<preset>.py`` files (each has
``get_config() -> ml_collections.ConfigDict``), a ``train.py`` with
``train_and_evaluate(config, workdir, options)`` and a short ``main.py`` that calls
:func:`run`. The flags are the same for every experiment::

    --workdir DIR           checkpoints, metrics, pictures, caches (re-running resumes)
    --preset NAME | --smoke a preset file of configs/ (default: ``default``)
    --config.a.b=VALUE      override a config field (ml_collections / absl syntax)
    --set FIELD=VALUE       the same; FIELD is a dotted path or a field name that occurs once
    --evaluate_only --pretrained PATH --fresh --no_progress
    --distributed [--coordinator H:P --num_processes N --process_id I]

Errors in flags or configs end the program with one ``error: ...`` line and exit status 2.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import pkgutil
import sys
from typing import Any, Callable, Sequence

from absl import flags
from ml_collections import ConfigDict, config_flags

__all__ = ["Options", "config_json", "load_config", "parse_flags", "presets", "resolve_field", "run",
           "save_config", "start_run"]


@dataclasses.dataclass(frozen=True)
class Options:
    """The run flags (everything that is not a config field)."""

    workdir: str
    preset: str
    evaluate_only: bool = False
    pretrained: str | None = None
    fresh: bool = False
    progress: bool = True
    distributed: bool = False
    coordinator: str | None = None
    num_processes: int | None = None
    process_id: int | None = None
    extra: dict = dataclasses.field(default_factory=dict)  # the experiment's own flags


def _define_run_flags(fv: flags.FlagValues, default_workdir: str) -> None:
    flags.DEFINE_string("workdir", default_workdir,
                        "checkpoints, metrics, pictures and data caches go here", flag_values=fv)
    flags.DEFINE_string("preset", None, "a preset of the experiment's configs/ folder",
                        flag_values=fv)
    flags.DEFINE_boolean("smoke", False, "tiny configuration (same as --preset smoke)",
                         flag_values=fv)
    flags.DEFINE_multi_string("set", [], "FIELD=VALUE: override a config field (repeatable)",
                              flag_values=fv)
    flags.DEFINE_boolean("evaluate_only", False,
                         "evaluate the best (else latest) checkpoint of --workdir or --pretrained",
                         flag_values=fv)
    flags.DEFINE_string("pretrained", None, "initial weights (a workdir or an original file)",
                        flag_values=fv)
    flags.DEFINE_boolean("fresh", False, "do not resume from --workdir", flag_values=fv)
    flags.DEFINE_boolean("no_progress", False, "no progress bar", flag_values=fv)
    flags.DEFINE_boolean("distributed", False, "call jax.distributed.initialize()",
                         flag_values=fv)
    flags.DEFINE_string("coordinator", None, "host:port of process 0 (with --distributed)",
                        flag_values=fv)
    flags.DEFINE_integer("num_processes", None, "processes (with --distributed)", flag_values=fv)
    flags.DEFINE_integer("process_id", None, "this process (with --distributed)", flag_values=fv)


def presets(configs: str) -> list[str]:
    """Names of the preset modules in the package ``configs`` (e.g. ``experiments.x.configs``)."""
    package = importlib.import_module(configs)
    return sorted(m.name for m in pkgutil.iter_modules(package.__path__)
                  if not m.name.startswith("_"))


def load_config(configs: str, preset: str) -> ConfigDict:
    """``configs.<preset>.get_config()``; ValueError for an unknown preset."""
    names = presets(configs)
    if preset not in names:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(names)}")
    return importlib.import_module(f"{configs}.{preset}").get_config()


def _leaves(config: ConfigDict, prefix: str = "") -> list[str]:
    out = []
    for key, value in config.items():
        path = f"{prefix}{key}"
        out += _leaves(value, path + ".") if isinstance(value, ConfigDict) else [path]
    return out


def resolve_field(config: ConfigDict, name: str) -> str:
    """The dotted path of config field ``name``: a full path, or a name that occurs once.

    Raises:
      ValueError: no field, or several fields, are called ``name``.
    """
    leaves = _leaves(config)
    if name in leaves:
        return name
    matches = [p for p in leaves if p.rsplit(".", 1)[-1] == name]
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise ValueError(f"config field {name!r} is ambiguous: use one of {', '.join(matches)}")
    raise ValueError(f"unknown config field {name!r}; fields are: {', '.join(leaves)}")


def _split_assignment(text: str, what: str) -> tuple[str, str]:
    if "=" not in text:
        raise ValueError(f"{what} {text!r}: expected FIELD=VALUE")
    key, value = text.split("=", 1)
    return key.strip(), value


def _config_overrides(config: ConfigDict, rest: Sequence[str], sets: Sequence[str]) -> list[str]:
    """``--config.x=v`` / ``--config.x v`` / ``--set x=v`` as ``--config.<path>=v`` flags."""
    out, i = [], 0
    while i < len(rest):
        item = rest[i]
        if not item.startswith("--config."):
            raise ValueError(f"unrecognized argument: {item}")
        if "=" in item:
            key, value = _split_assignment(item[len("--config."):], "argument")
        elif i + 1 < len(rest):
            key, value = item[len("--config."):], rest[i + 1]
            i += 1
        else:
            raise ValueError(f"{item} needs a value")
        out.append(f"--config.{resolve_field(config, key)}={value}")
        i += 1
    for item in sets:
        key, value = _split_assignment(item, "--set")
        out.append(f"--config.{resolve_field(config, key)}={value}")
    return out


def _apply_overrides(config: ConfigDict, overrides: list[str], prog: str) -> ConfigDict:
    argv = [prog, *overrides]
    fv = flags.FlagValues()
    config_flags.DEFINE_config_dict("config", config, flag_values=fv, lock_config=True,
                                    sys_argv=argv)
    try:
        fv(argv)
    except flags.IllegalFlagValueError as e:
        message = str(e).split("\n")[0]
        raise ValueError(f"config field {message.removeprefix('flag --config.')}") from None
    return fv.config


def parse_flags(argv: Sequence[str], *, prog: str, description: str, configs: str,
                default_workdir: str,
                extra_flags: Callable[[flags.FlagValues], None] | None = None
                ) -> tuple[ConfigDict, Options]:
    """Parse an experiment's command line into ``(config, options)``.

    Args:
      argv: the arguments without the program name.
      prog: program name for messages (``python -m experiments.x``).
      description: first line of ``--help``.
      configs: package with one ``get_config()`` module per preset.
      default_workdir: ``--workdir`` when not given.
      extra_flags: defines the experiment's own absl flags on the given ``FlagValues``; their
        values land in ``options.extra``.

    Raises:
      ValueError: unknown flag, preset or config field, or a value of the wrong type.
      SystemExit: after printing ``--help``.
    """
    fv = flags.FlagValues()
    _define_run_flags(fv, default_workdir)
    run_names = set(fv)
    if extra_flags is not None:
        extra_flags(fv)
    if "-h" in argv or "--help" in argv:
        print(f"{prog}: {description}\n\npresets: {', '.join(presets(configs))}\n"
              f"{fv.get_help()}\n  --config.FIELD=VALUE: override a config field "
              f"(see the preset files in {configs.replace('.', '/')}/)")
        raise SystemExit(0)
    try:
        rest = fv([prog, *argv], known_only=True)[1:]
    except flags.Error as e:
        raise ValueError(str(e).split("\n")[0]) from None
    if fv.smoke and fv.preset not in (None, "smoke"):
        raise ValueError("--smoke and --preset are exclusive")
    preset = "smoke" if fv.smoke else (fv.preset or "default")
    config = load_config(configs, preset)
    config = _apply_overrides(config, _config_overrides(config, rest, fv.set), prog)
    extra_names = sorted(n for n in fv if n not in run_names)
    options = Options(workdir=os.path.abspath(fv.workdir), preset=preset,
                      evaluate_only=fv.evaluate_only, pretrained=fv.pretrained, fresh=fv.fresh,
                      progress=not fv.no_progress, distributed=fv.distributed,
                      coordinator=fv.coordinator, num_processes=fv.num_processes,
                      process_id=fv.process_id, extra={n: fv[n].value for n in extra_names})
    return config, options


def save_config(config: ConfigDict, workdir: str) -> None:
    """Write ``workdir/config.json`` (the resolved config of a run)."""
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "config.json"), "w", encoding="utf-8") as f:
        f.write(config.to_json_best_effort(indent=1))


def run(argv: Sequence[str] | None, *, prog: str, description: str, configs: str,
        default_workdir: str,
        train_and_evaluate: Callable[[ConfigDict, str, Options], Any],
        extra_flags: Callable[[flags.FlagValues], None] | None = None) -> int:
    """Parse flags, join a multi-host run if asked, call ``train_and_evaluate``.

    Returns the exit status: 0, or 2 after printing one ``error: ...`` line for a ValueError or
    FileNotFoundError (bad flags, configs, paths or data).
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        config, options = parse_flags(argv, prog=prog, description=description, configs=configs,
                                      default_workdir=default_workdir, extra_flags=extra_flags)
        if options.distributed:
            import jax

            kw = {k: v for k, v in dict(coordinator_address=options.coordinator,
                                        num_processes=options.num_processes,
                                        process_id=options.process_id).items() if v is not None}
            jax.distributed.initialize(**kw)
        train_and_evaluate(config, options.workdir, options)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def config_json(config: ConfigDict) -> dict:
    """The config as plain JSON types (for summaries)."""
    return json.loads(config.to_json_best_effort())


def start_run(config: ConfigDict, workdir: str, options: Options | None, log=print,
              *, describe: str = ""):
    """The opening every experiment's ``train_and_evaluate`` shares.

    Checks ``--pretrained`` exists and the global batch fits the devices, creates ``workdir``,
    logs one line about the run (``describe`` is added to it), writes ``config.json``.

    Returns:
      ``(options, log, is_main)``: ``options`` defaulted, ``log`` silenced on every process but
      the first.

    Raises:
      FileNotFoundError: ``options.pretrained`` does not exist.
      ValueError: ``config.train.batch_size`` is not divisible by the device count.
    """
    import jax

    from ppac_jax.train.state import check_batch_size, make_mesh

    options = options or Options(workdir=workdir, preset="custom")
    if options.pretrained and not os.path.exists(options.pretrained):
        raise FileNotFoundError(f"--pretrained: no such file or directory: {options.pretrained}")
    is_main = jax.process_index() == 0
    log = log if is_main else (lambda *a, **k: None)
    os.makedirs(workdir, exist_ok=True)
    check_batch_size(config.train.batch_size, make_mesh())
    log(f"preset {options.preset}{', ' + describe if describe else ''}, {jax.device_count()} "
        f"device(s) on {jax.process_count()} process(es), global batch "
        f"{config.train.batch_size}, workdir {workdir}")
    if is_main:
        save_config(config, workdir)
    return options, log, is_main
