"""Build a timm MobileViT with the requested weights: pretrained, seeded random, or a checkpoint."""
import hashlib
import warnings
from pathlib import Path

import torch

import mvlib  # noqa: F401  (applies the torchvision import fix before timm)
from mvlib import env
import timm

HUB_HOST = ("huggingface.co", 443)
HUB_TIMEOUT_S = 10.0  # deciding to fall back must take at most this long


def variants() -> list[str]:
    """MobileViT variants timm can build (mobilevit_* and mobilevitv2_*)."""
    return sorted(timm.list_models("mobilevit*"))


def check_variant(variant: str) -> str:
    """Return `variant` if timm knows it, else raise naming the valid ones."""
    valid = variants()
    if variant not in valid:
        raise ValueError(f"unknown model variant {variant!r}; valid variants: {', '.join(valid)}")
    return variant


def hub_reachable(timeout: float = HUB_TIMEOUT_S) -> tuple[bool, str]:
    """Whether the weights hub answers a TCP connection within `timeout` seconds (DNS included)."""
    return env.reachable(*HUB_HOST, timeout)


def _random(variant: str, seed: int) -> torch.nn.Module:
    """The architecture with seeded random weights (the same seed gives the same weights)."""
    torch.manual_seed(seed)
    return timm.create_model(variant, pretrained=False)


def _from_checkpoint(variant: str, path: Path) -> torch.nn.Module:
    """The architecture with weights from a local checkpoint, checked key by key."""
    if not path.is_file():
        raise FileNotFoundError(f"weights checkpoint {str(path)!r} does not exist; pass weights='auto', "
                                "'random' or the path of a .pth/.pt/.safetensors state dict")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model", "state_dict_ema"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ValueError(f"checkpoint {path} holds a {type(state).__name__}, not a state dict")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    model = timm.create_model(variant, pretrained=False)
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mis_shaped = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or mis_shaped:
        raise ValueError(
            f"checkpoint {path} is not for {variant}: {len(missing)} missing keys, {len(unexpected)} unexpected, "
            f"{len(mis_shaped)} with other shapes (e.g. {(missing + unexpected + mis_shaped)[:3]}); "
            f"pass the variant it was trained for (one of {', '.join(variants())})")
    model.load_state_dict(state)
    return model


def _sha8(path: Path) -> str:
    """First 8 hex digits of a file's SHA-256."""
    return hashlib.sha256(path.read_bytes()).hexdigest()[:8]


def load_model(variant: str, weights: str = "auto", seed: int = 0) -> tuple[torch.nn.Module, dict]:
    """Build `variant` in eval mode with `weights` ('auto', 'random' or a checkpoint path); return it and a description."""
    check_variant(variant)
    if weights == "random":
        info = {"source": "random", "tag": f"random-seed{seed}", "label": f"random weights (seed {seed})"}
        return _random(variant, seed).eval(), info
    if weights == "auto":
        ok, why = hub_reachable()
        if ok:
            try:
                model = timm.create_model(variant, pretrained=True)
                return model.eval(), {"source": "pretrained", "tag": "pretrained",
                                      "label": f"timm pretrained {variant}"}
            except Exception as err:  # a hub that answers but fails to serve is a fallback case too
                why = f"download failed: {type(err).__name__}: {err}"
        banner = (f"WEIGHTS FALLBACK: pretrained {variant} weights unavailable ({why}); using seeded RANDOM "
                  f"weights (seed {seed}). Accuracy figures compare backends with each other, not with ImageNet.")
        print("!" * 100 + "\n" + banner + "\n" + "!" * 100)
        warnings.warn(banner, RuntimeWarning, stacklevel=2)
        info = {"source": "random", "tag": f"random-seed{seed}", "label": f"random weights (seed {seed}, fallback)",
                "fallback_reason": why}
        return _random(variant, seed).eval(), info
    path = Path(weights).expanduser()
    model = _from_checkpoint(variant, path)
    return model.eval(), {"source": "checkpoint", "tag": f"ckpt-{_sha8(path)}", "label": f"checkpoint {path.name}",
                          "path": str(path)}


def data_config(model: torch.nn.Module) -> dict:
    """timm's evaluation preprocessing for this model (resize, crop_pct, interpolation, mean, std)."""
    return timm.data.resolve_data_config({}, model=model)
