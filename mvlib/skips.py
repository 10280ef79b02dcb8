"""Why a stage did not run: the one exception every stage raises to be recorded as skipped (a leaf module)."""


class StageSkipped(Exception):
    """Raised inside a stage to record it as skipped with a reason (never a silent skip).

    `needs` names the notebooks whose output was missing (e.g. "04", or ["03", "05"]): a run that left
    those notebooks out (`--only`) reports the skip as caused by the selection, not as a tier failure.
    Without it, a reason that says "notebook 04 writes it" / "(notebook 05 builds it)" means the same.
    """

    def __init__(self, reason: str, needs: str | list[str] | tuple[str, ...] = ()):
        super().__init__(reason)
        self.needs = [needs] if isinstance(needs, str) else list(needs)
