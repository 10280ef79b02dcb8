"""Build a timm MobileViT with the requested weights: pretrained, seeded random, or a checkpoint.

Serves: notebooks 01 to 06 through export, and the driver (the weights decision, once per run).
"""
import warnings
from pathlib import Path

import timm
import torch

from mvlib import env, io

HUB_HOST = ("huggingface.co", 443)
HUB_TIMEOUT_S = 10.0  # deciding to fall back must take at most this long


# MobileViT v2 (timm's mobilevitv2_*) builds and exports, but notebook 04's policies other than `all` quantize
# tensors the `all` model leaves unquantized, so they cannot take its scales (issue 26, row 6): the study refuses v2
# up front instead of failing minutes into a run.
UNSUPPORTED_PREFIX = "mobilevitv2_"


def variants() -> list[str]:
    """The MobileViT variants the study runs end to end: timm's mobilevit_* (xxs, xs, s)."""
    return sorted(v for v in timm.list_models("mobilevit*") if not v.startswith(UNSUPPORTED_PREFIX))


def check_variant(variant: str) -> str:
    """Return `variant` if the study runs it end to end, else raise naming the ones it runs."""
    valid = variants()
    if variant in valid:
        return variant
    if str(variant).startswith(UNSUPPORTED_PREFIX) and variant in timm.list_models("mobilevitv2*"):
        raise ValueError(f"{variant}: MobileViT v2 is not supported by the study (notebook 04's INT8 policies cannot "
                         f"share its calibration scales); choose {', '.join(valid)}")
    raise ValueError(f"unknown model variant {variant!r}; valid variants: {', '.join(valid)}")


def hub_reachable(timeout: float = HUB_TIMEOUT_S) -> tuple[bool, str]:
    """Whether the weights hub answers a TCP connection within `timeout` seconds (DNS included)."""
    return env.reachable(*HUB_HOST, timeout)


def _random(variant: str, seed: int) -> torch.nn.Module:
    """The architecture with seeded random weights (the same seed gives the same weights)."""
    torch.manual_seed(seed)
    return timm.create_model(variant, pretrained=False)


def _missing_checkpoint(path: Path) -> FileNotFoundError:
    """The error for a checkpoint path that is not a file."""
    return FileNotFoundError(f"weights checkpoint {str(path)!r} does not exist; pass weights='auto', "
                             "'pretrained', 'random' or the path of a .pth/.pt/.safetensors state dict")


def read_checkpoint(path: Path) -> dict:
    """The state dict a checkpoint file holds (.safetensors, or torch.save's format read as plain tensors only), with
    `module.` prefixes and a training checkpoint's wrapping removed; else ValueError saying what the file is not."""
    if not path.is_file():
        raise _missing_checkpoint(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch's own message suggests weights_only=False: never for a file
        # that may not be trusted (unpickling runs its code), so it is not repeated
        raise ValueError(f"{path} is not a PyTorch checkpoint: it does not read as a state dict of tensors "
                         f"({type(err).__name__}); pass a .pth/.pt file written by torch.save(model.state_dict()) "
                         "or a .safetensors file") from None
    for key in ("state_dict", "model", "state_dict_ema"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} is not a PyTorch checkpoint of a model: it holds a {type(state).__name__}, not a "
                         "state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def _shapes(variant: str) -> dict[str, tuple]:
    """Every key of `variant`'s state dict with its shape (the model built on the meta device: no memory, no init;
    on the CPU where timm cannot build it there)."""
    try:
        with torch.device("meta"):
            model = timm.create_model(variant, pretrained=False)
    except RuntimeError:  # timm 1.0.3 (the declared floor) copies out of a tensor while it initializes
        model = timm.create_model(variant, pretrained=False)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _mismatch(state: dict, shapes: dict[str, tuple]) -> tuple[list, list, list]:
    """Keys a state dict lacks, keys it has in excess, and keys whose shapes differ, against a model's shapes."""
    missing = sorted(set(shapes) - set(state))
    unexpected = sorted(set(state) - set(shapes))
    mis_shaped = sorted(k for k in set(shapes) & set(state) if tuple(state[k].shape) != shapes[k])
    return missing, unexpected, mis_shaped


def check_checkpoint(variant: str, path: Path) -> dict:
    """The checkpoint's state dict if its keys and shapes are `variant`'s; else ValueError naming the variant whose
    they are (any timm MobileViT), or what differs."""
    state = read_checkpoint(path)
    missing, unexpected, mis_shaped = _mismatch(state, _shapes(variant))
    if not (missing or unexpected or mis_shaped):
        return state
    owner = next((v for v in timm.list_models("mobilevit*") if v != variant and not any(_mismatch(state, _shapes(v)))),
                 None)
    if owner is not None:
        raise ValueError(f"{path} is a checkpoint of {owner} (its keys and shapes), not {variant}: pass variant "
                         f"{owner}, or a checkpoint of {variant}")
    raise ValueError(f"{path} is not a checkpoint of {variant} nor of another MobileViT: {len(missing)} missing keys, "
                     f"{len(unexpected)} unexpected, {len(mis_shaped)} with other shapes "
                     f"(e.g. {(missing + unexpected + mis_shaped)[:3]})")


def _from_checkpoint(variant: str, path: Path) -> torch.nn.Module:
    """The architecture with weights from a local checkpoint, checked key by key."""
    state = check_checkpoint(variant, path)
    model = timm.create_model(variant, pretrained=False)
    model.load_state_dict(state)
    return model


def random_info(seed: int, fallback_reason: str = "") -> dict:
    """How seeded random weights are described (manifest, figure footers); a fallback from 'auto' says why."""
    if not fallback_reason:
        return {"source": "random", "tag": f"random-seed{seed}", "label": f"random weights (seed {seed})"}
    return {"source": "random", "tag": f"random-seed{seed}", "label": f"random weights (seed {seed}, fallback)",
            "fallback_reason": fallback_reason}


def pretrained_label(variant: str) -> str:
    """How timm's pretrained weights are described."""
    return f"timm pretrained {variant}"


def _pretrained(variant: str, probe: bool = True) -> tuple[torch.nn.Module | None, str]:
    """timm's pretrained `variant` and '', or None and why not; `probe` first asks the hub within HUB_TIMEOUT_S."""
    if probe:
        ok, why = hub_reachable()
        if not ok:
            return None, why
    try:
        return timm.create_model(variant, pretrained=True), ""
    except Exception as err:  # a hub that answers but fails to serve is a fallback case too
        return None, f"download failed: {type(err).__name__}: {err}"


def announce_fallback(variant: str, seed: int, why: str) -> None:
    """Say loudly that 'auto' falls back to random weights: a banner in the log and a RuntimeWarning."""
    banner = (f"WEIGHTS FALLBACK: pretrained {variant} weights unavailable ({why}); using seeded RANDOM "
              f"weights (seed {seed}). Accuracy figures compare backends with each other, not with ImageNet.")
    print("!" * 100 + "\n" + banner + "\n" + "!" * 100)
    warnings.warn(banner, RuntimeWarning, stacklevel=4)  # the caller of load_model


def _from_hub(variant: str, weights: str, seed: int) -> tuple[torch.nn.Module | None, str]:
    """For 'auto' or 'pretrained': timm's pretrained model and '', or (for 'auto', announced) None and why not."""
    model, why = _pretrained(variant, probe=weights == "auto")
    if model is None and weights == "pretrained":  # asked for by name (or decided by the driver): no fallback
        raise RuntimeError(f"pretrained {variant} weights unavailable ({why}); pass weights='auto' to fall back "
                           "to seeded random weights, 'random', or a checkpoint path")
    if model is None:
        announce_fallback(variant, seed, why)
    return model, why


def resolve_weights(variant: str, weights: str = "auto", seed: int = 0) -> dict:
    """Decide a run's weights once: the concrete choice every notebook gets ('pretrained', 'random' or a path) and why.

    'auto' becomes 'pretrained' where the hub serves them (downloaded now into timm's cache, so the notebooks
    load them from there), else 'random', announced as loudly as load_model's fallback.
    """
    check_variant(variant)
    decision = {"requested": weights}
    if weights in ("auto", "pretrained"):
        model, why = _from_hub(variant, weights, seed)
        if model is not None:
            return decision | {"chosen": "pretrained", "reason": "the hub served timm's pretrained weights",
                               "label": pretrained_label(variant)}
        return decision | {"chosen": "random", "reason": why, "fallback": True,
                           "label": random_info(seed, why)["label"]}
    if weights == "random":
        return decision | {"chosen": "random", "reason": "asked for", "label": random_info(seed)["label"]}
    path = Path(weights).expanduser().resolve()  # absolute: the notebooks run in notebooks/, not the caller's folder
    check_checkpoint(variant, path)  # a file that is no checkpoint of `variant` is refused before any notebook runs
    return decision | {"chosen": str(path), "reason": f"a checkpoint of {variant} given",
                       "label": f"checkpoint {path.name}"}


def load_model(variant: str, weights: str = "auto", seed: int = 0) -> tuple[torch.nn.Module, dict]:
    """`variant` in eval mode with `weights` ('auto', 'pretrained', 'random' or a checkpoint path), and a description.

    'auto' is decided here, once per call; the driver decides it once per run (resolve_weights) and hands every
    notebook the concrete choice. 'pretrained' never falls back.
    """
    check_variant(variant)
    if weights in ("auto", "pretrained"):
        model, why = _from_hub(variant, weights, seed)
        if model is not None:
            return model.eval(), {"source": "pretrained", "tag": "pretrained", "label": pretrained_label(variant)}
        return _random(variant, seed).eval(), random_info(seed, why)
    if weights == "random":
        return _random(variant, seed).eval(), random_info(seed)
    path = Path(weights).expanduser()
    model = _from_checkpoint(variant, path)
    return model.eval(), {"source": "checkpoint", "tag": f"ckpt-{io.sha256(path)[:8]}",
                          "label": f"checkpoint {path.name}", "path": str(path)}


def data_config(model: torch.nn.Module) -> dict:
    """timm's evaluation preprocessing for this model (resize, crop_pct, interpolation, mean, std)."""
    return timm.data.resolve_data_config({}, model=model)
