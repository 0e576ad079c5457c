"""Event ids (`new_id`): unique in a forked worker and across threads, as uuid4's are."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pytest

from fastapi_dapr.sidecar.envelope import new_id

ROOT = Path(__file__).resolve().parents[2]

# Run in a fresh interpreter: forking the test process, which may have threads, is unsafe.
FORKED = """
import os
from fastapi_dapr.sidecar.envelope import new_id

new_id()  # the parent has read random bytes ahead and used some of them
read, write = os.pipe()
pid = os.fork()  # as `uvicorn --workers` and gunicorn start their workers
if pid == 0:
    os.close(read)
    with os.fdopen(write, "w") as pipe:
        pipe.write(" ".join(new_id() for _ in range(300)))
    os._exit(0)
os.close(write)
with os.fdopen(read) as pipe:
    child = pipe.read().split()
os.waitpid(pid, 0)
parent = [new_id() for _ in range(300)]
print(len(child), len(set(child) & set(parent)))
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no os.fork on this platform")
@pytest.mark.process
def test_a_forked_worker_does_not_hand_out_its_parents_ids() -> None:
    done = subprocess.run(
        [sys.executable, "-c", FORKED], cwd=ROOT, capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.split() == ["300", "0"], done.stderr


def test_threads_get_ids_of_their_own() -> None:
    ids: list[list[str]] = [[] for _ in range(4)]

    def take(into: list[str]) -> None:
        into.extend(new_id() for _ in range(2000))

    threads = [threading.Thread(target=take, args=(into,)) for into in ids]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    every = [one for taken in ids for one in taken]
    assert len(set(every)) == len(every) == 8000
    for one in every[::97]:
        parsed = uuid.UUID(one)
        assert (parsed.version, parsed.variant, str(parsed)) == (4, uuid.RFC_4122, one)
