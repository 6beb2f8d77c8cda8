"""The ``cli`` fixture's fork server serves calls made after the test process imported the libraries.

A call forks only when its environment matches the server's start-up environment (``cli_forkserver``).
Libraries that set a variable when imported (torch's inductor through diffusers, open_clip, mlflow,
scikit-learn) once made every later call of a test process that had run them in-process start a
fresh interpreter: about a second of CPU each instead of a tenth.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from cli_forkserver import _start_up_env
from conftest import REPO

LIBRARIES = ["torch", "diffusers", "transformers", "peft", "accelerate", "open_clip", "mlflow", "celery", "sqlalchemy",
             "sklearn.svm", "joblib", "threadpoolctl", "latentops.platform.cli.main", "latentops.platform.api.app",
             "pipelines.demo.digits"]
# A fresh process's environment: the test process's own already holds what its imports set.
BASE_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "OMP_NUM_THREADS")


def test_importing_the_libraries_leaves_the_start_up_environment_as_it_was() -> None:
    script = ("import json, os\nbefore = dict(os.environ)\n"
              f"for name in {LIBRARIES!r}:\n    __import__(name)\n"
              "print(json.dumps([before, dict(os.environ)]))")
    env = {key: os.environ[key] for key in BASE_ENV if key in os.environ}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, env=env, timeout=300,
                          check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    before, after = json.loads(done.stdout.splitlines()[-1])
    assert set(after) - set(before), "no library set a variable: the check below would pass vacuously"
    started, imported = _start_up_env(before), _start_up_env(after)
    changed = sorted(k for k in started.keys() | imported.keys() if started.get(k) != imported.get(k))
    assert changed == [], f"set on import, and not known to cli_forkserver.SET_BY_IMPORTS: {changed}"
