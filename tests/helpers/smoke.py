"""Where the session's one smoke run of the study builds, and the model folder its tests read.

The smoke run has a build folder of its own because it runs in the background while the other tests run (two
cores: the run's notebooks on one, the rest of the suite on the other). Tests that prune the engine cache or break
the plugin build on purpose then never touch what the run is using. Its name has a space, as a user's folders may:
every path the study hands to a shell, nvcc or a notebook is then tried with one (issue 26, row 1).
"""
from pathlib import Path

from mvlib import paths

BUILD = paths.ROOT / "build" / "tests smoke"
RUN = BUILD / "run"


def model_dir(variant: str = "mobilevit_xxs", weights_tag: str = "random-seed0", img_size: int = 256,
              opset: int = 17) -> Path:
    """The smoke run's folder of ONNX files derived from one export (paths.model_dir, in the run's build)."""
    return BUILD / paths.model_dir(variant, weights_tag, img_size, opset).relative_to(paths.BUILD)
