"""`ctxext run`: the curriculum on one machine (torchrun on CPU), with resume, gates and a report.

No torch here: the trainer and the evaluation run in subprocesses. See :mod:`ctxext.local_run.runner`.
"""
