"""A clean Ctrl-C of `ctxext run` leaves no torch traceback in trainer.log (issue #23 item 12).

`ctxext run` SIGTERMs the trainer's whole process group (launcher and workers), as runner._terminate
does. Plain ``torch.distributed.run`` answers SIGTERM by raising ``SignalException`` out of its agent
(a traceback in trainer.log, exit 1); the launcher `ctxext run` starts must exit quietly with 143.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from ctxext.local_run.runner import _env, trainer_command

WORKER = '''
import os, signal, sys, time
signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # the trainer: checkpoint, then exit PREEMPTED
open(sys.argv[1], "w").close()
while True:
    time.sleep(0.1)
'''


def test_sigterm_of_the_trainer_group_exits_143_without_a_traceback(tmp_path: Path) -> None:
    cmd = trainer_command(tmp_path / "stage-config.json", 1)
    launcher = cmd[: cmd.index("ctxext_trainer") - 1]  # up to the worker's "-m ctxext_trainer"
    worker, ready = tmp_path / "worker.py", tmp_path / "ready"
    worker.write_text(WORKER)
    log = tmp_path / "trainer.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([*launcher, str(worker), str(ready)], env=_env(), stdout=out, stderr=out,
                                start_new_session=True)
        deadline = time.monotonic() + 120
        while not ready.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert ready.exists(), log.read_text()
        os.killpg(proc.pid, signal.SIGTERM)
        code = proc.wait(timeout=120)
    text = log.read_text()
    assert "Traceback" not in text and "SignalException" not in text, text
    assert code == 143, text
    assert sys.executable == launcher[0]
