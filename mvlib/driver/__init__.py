"""The parts of the batch driver (`python -m mvlib.study`): parameters, verdicts, run folders, publishing, kernels.

`mvlib.study` is its command line; each module here holds one of the ideas it puts together.

Serves: the driver (`python -m mvlib.study`); no notebook imports it.
"""
OK, FAILED, BAD_INPUT, INTERRUPTED = 0, 1, 2, 130  # the driver's exit codes (mvlib.study.EXIT_CODES)
