"""The run's parameters: profiles, `-p` overrides, what each parameter means, and the rules values obey.

A parameter is explained in one place, its line in a notebook's `parameters` cell (`name = default  # meaning`),
read as papermill reads it; a parameter several notebooks declare is declared alike in each (`disagreements`,
checked by tests/driver/test_params.py), and the full profile gives it the same value.

Serves: the driver (the notebooks' parameters cells are its table).
"""
import argparse
import ast
import difflib
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from mvlib import paths, stages


class BadInput(ValueError):
    """Input the driver refuses before it touches anything (exit code 2)."""


@dataclass(frozen=True)
class Param:
    """A notebook parameter as its `parameters` cell declares it: its default and what it means (the line's comment)."""
    default: Any
    meaning: str


def load_profile(name: str) -> dict:
    """Parameters of a named profile (mvlib/profiles/<name>.yaml)."""
    path = paths.PROFILES / f"{name}.yaml"
    if not path.exists():
        raise BadInput(f"unknown profile {name!r}; choose one of {', '.join(profile_names())}")
    return yaml.safe_load(path.read_text())


def profile_names() -> list[str]:
    """The profiles there are (mvlib/profiles/*.yaml)."""
    return sorted(p.stem for p in paths.PROFILES.glob("*.yaml"))


def declared(nb: Path) -> set[str]:
    """Names declared in a notebook's `parameters` cell."""
    return set(stages.parameter_names(nb) or [])


def declarations(notebooks: list[Path]) -> dict[str, dict[str, Param]]:
    """Per parameter, how each of `notebooks` that declares it declares it (papermill's reading of the cells)."""
    out: dict[str, dict[str, Param]] = {}
    for nb in notebooks:
        for name, info in (stages.parameters(nb) or {}).items():
            out.setdefault(name, {})[nb.stem] = Param(ast.literal_eval(info["default"]), info["help"])
    return out


def disagreements(found: dict[str, dict[str, Param]]) -> list[str]:
    """"variant: 01_export declares ..., 03_fp32_fp16 declares ..." for each parameter that notebooks declare with
    another default or meaning (a parameter has one of each, so the table below can be read off any notebook)."""
    out = []
    for name, by_nb in sorted(found.items()):
        first, *rest = by_nb.items()
        other = next(((nb, p) for nb, p in rest if p != first[1]), None)
        if other:
            out.append(f"{name}: {first[0]} declares {first[1]}, {other[0]} declares {other[1]}; "
                       "write it alike in every parameters cell")
    return out


@functools.cache
def table() -> dict[str, Param]:
    """Every parameter the notebooks declare, with its default and meaning (as the first notebook declares it)."""
    return {name: next(iter(by_nb.values())) for name, by_nb in declarations(stages.all_notebooks()).items()}


def defaults() -> dict:
    """Every parameter a notebook declares (run_dir aside) with its default value there."""
    return {name: p.default for name, p in table().items() if name != "run_dir"}


def nearest(name: str, known) -> str:
    """' (did you mean batch_max?)' for the closest known name, else the list of known names."""
    close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else f"; known parameters: {', '.join(sorted(known))}"


def typed(name: str, value, default):
    """`value` as the type of the notebooks' default for `name`, or BadInput naming what is expected."""
    def bad(what: str) -> BadInput:
        return BadInput(f"-p {name} {value!r}: expected {what} (the notebooks' default is {default!r})")
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise bad("true or false")
    elif isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad("an integer")
    elif isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad("a number")
        value = float(value)
    elif isinstance(default, str):
        if value is None:
            value = ""
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            value = str(value)  # a folder or checkpoint named by digits
        if not isinstance(value, str):
            raise bad("a string")
    elif isinstance(default, list):
        if not isinstance(value, list):
            value = [value]
        kinds = {type(v) for v in default}
        if kinds == {int} and not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            raise bad("a list of integers, e.g. [1, 8]")
        if kinds == {str} and not all(isinstance(v, str) for v in value):
            raise bad("a list of names")
    return value


# The notebooks' own rules (their parameter comments), checked here before anything runs. Choices that modules
# define are tested against those modules (tests/driver/test_params.py).
CHOICES = {"granularity": ("stage", "block", "layer"), "high_precision": ("fp16", "fp32"),
           "swap_dtypes": ("float32", "float16")}
AT_LEAST = {"seed": 0, "n_images": 1, "calib_images": 1, "eval_images": 1, "sensitivity_images": 1,
            "bench_repeats": 2, "bandwidth_samples": 1, "block": 0, "warmup_s": 0.0}
POSITIVE = ("bench_seconds", "workspace_gb", "data_max", "atol", "rtol", "silu_atol", "silu_rtol")
BATCH_LISTS = ("cpu_batches", "gpu_batches", "swap_batches", "check_batches")


def value_problems(params: dict) -> list[str]:
    """What is wrong with the values of a run's parameters (cheap rules first, then the model's own)."""
    problems = []
    for name, low in AT_LEAST.items():
        if name in params and params[name] < low:
            problems.append(f"{name}={params[name]}: must be at least {low}")
    problems += [f"{name}={params[name]}: must be above 0" for name in POSITIVE
                 if name in params and not params[name] > 0]
    problems += [f"{name}={params[name]}: use positive batch sizes, e.g. [1, 8]" for name in BATCH_LISTS
                 if name in params and (not params[name] or min(params[name]) < 1)]
    for name, choices in CHOICES.items():
        values = params.get(name)
        for v in values if isinstance(values, list) else [] if values is None else [values]:
            if v not in choices:
                problems.append(f"{name}={v!r}: choose {' or '.join(choices)}")
    b = [params.get(k) for k in ("batch_min", "batch_opt", "batch_max")]
    if None not in b and not 1 <= b[0] <= b[1] <= b[2]:
        problems.append(f"batch_min={b[0]}, batch_opt={b[1]}, batch_max={b[2]}: the TensorRT profile needs "
                        "1 <= batch_min <= batch_opt <= batch_max (the full profile has 1, 16, 32)")
    if params.get("image_dir") and not Path(params["image_dir"]).expanduser().is_dir():
        problems.append(f"image_dir={params['image_dir']!r} is not a folder (leave it empty for ImageNette, else "
                        "the shipped sample images)")
    from mvlib import export, model  # the notebooks' own checks of what the model accepts
    for check, name in ((export.check_image_size, "img_size"), (export.check_opset, "opset"),
                        (model.check_variant, "variant")):
        try:
            check(params[name])
        except (ValueError, KeyError) as err:
            problems.append(f"{name}: {err}")
    return problems


def parameters(profile: str, overrides: list[tuple[str, str]]) -> tuple[dict, list[str]]:
    """The profile with the `-p NAME VALUE` overrides that name a known parameter with a value of its type, and
    what is wrong with the others."""
    params = load_profile(profile)
    known = defaults()
    problems = []
    for name, text in overrides:
        if name == "run_dir":
            problems.append("-p run_dir: the driver sets it; pass --run-dir instead")
            continue
        if name not in known:
            problems.append(f"-p {name}: no notebook has a parameter {name!r}" + nearest(name, known))
            continue
        try:
            params[name] = typed(name, yaml.safe_load(text), known[name])
        except yaml.YAMLError as err:
            problems.append(f"-p {name} {text!r}: not a value ({err.__class__.__name__})")
        except BadInput as err:
            problems.append(str(err))
    return params, problems


def seconds(text: str) -> int:
    """A positive whole number of seconds (--timeout), or argparse's one-line refusal."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds, e.g. 3600")
    return value
