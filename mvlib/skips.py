"""Why a stage did not run: the one exception every stage raises to be recorded as skipped (a leaf module).

Serves: notebooks 01 to 06 (every stage that cannot run raises it).
"""


class StageSkipped(Exception):
    """Raised inside a stage to record it as skipped with a reason (never a silent skip).

    `needs` names the artifacts (file names, e.g. "model.int8.onnx") whose absence caused the skip; the registry
    `mvlib.stages` says which notebook makes each, so a run that left that notebook out (`--only`) reports the
    skip as caused by the selection, not as a tier failure.
    """

    def __init__(self, reason: str, needs: str | list[str] | tuple[str, ...] = ()):
        super().__init__(reason)
        self.needs = (needs,) if isinstance(needs, str) else tuple(needs)
