"""Execute a notebook headless with this interpreter's ipykernel; non-zero on any cell error.

Usage:
    python tests/notebook.py notebooks/loss_curves.ipynb [--run-dir runs/smoke/...]
        [--output executed.ipynb] [--timeout 600]

No kernel is registered anywhere: a throw-away kernelspec pointing at sys.executable lives
in a temporary JUPYTER_PATH entry for the duration of the run. The notebook runs with the
repository root as its working directory; --run-dir is passed as $ELASTIC_RUN_DIR.
"""

import argparse
import json
import os
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from elastic_keras import files  # noqa: E402
from elastic_keras.errors import ElasticKerasError  # noqa: E402

KERNEL = "elastic-keras-python3"


def _kernelspec(folder):
    """A kernelspec for this very interpreter, in `folder`/kernels/."""
    spec_dir = os.path.join(folder, "kernels", KERNEL)
    os.makedirs(spec_dir)
    spec = {"argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": "Python 3 (elastic-keras)", "language": "python"}
    with open(os.path.join(spec_dir, "kernel.json"), "w", encoding="utf-8") as f:
        json.dump(spec, f)


def run_notebook(path, run_dir=None, output=None, timeout=600, cwd=REPO):
    """Execute `path` top to bottom; raise ElasticKerasError on a cell error."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    if not os.path.isfile(path):
        raise ElasticKerasError(f"notebook not found: {path}")
    nb = nbformat.read(path, as_version=4)
    env = {"ELASTIC_RUN_DIR": os.path.abspath(run_dir)} if run_dir else {}
    saved = {k: os.environ.get(k) for k in ("JUPYTER_PATH", "ELASTIC_RUN_DIR",
                                            "MPLBACKEND", "TF_CPP_MIN_LOG_LEVEL")}
    with tempfile.TemporaryDirectory(prefix="elastic-nb-") as tmp:
        _kernelspec(tmp)
        # The kernel inherits this environment (jupyter_client starts it as a subprocess).
        os.environ["JUPYTER_PATH"] = os.pathsep.join(
            p for p in (tmp, saved["JUPYTER_PATH"]) if p)
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        # Inline figures land in the executed notebook, whatever the caller's backend.
        os.environ["MPLBACKEND"] = "module://matplotlib_inline.backend_inline"
        os.environ.update(env)
        try:
            client = NotebookClient(nb, timeout=timeout, kernel_name=KERNEL,
                                    resources={"metadata": {"path": cwd}})
            client.execute()
        except CellExecutionError as e:
            raise ElasticKerasError(f"{path}: a cell failed:\n{e}") from None
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
    if output:
        files.write_text(output, nbformat.writes(nb))
    return nb


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("notebook")
    p.add_argument("--run-dir", default=None, help="run directory to read (sets $ELASTIC_RUN_DIR)")
    p.add_argument("--output", default=None, help="also save the executed notebook here")
    p.add_argument("--timeout", type=int, default=600, help="seconds per cell")
    args = p.parse_args(argv)
    try:
        run_notebook(args.notebook, args.run_dir, args.output, args.timeout)
    except ElasticKerasError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"ok: {args.notebook} executed without errors")
    return 0


if __name__ == "__main__":
    sys.exit(main())
