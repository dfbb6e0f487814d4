"""Write the notebooks in notebooks/ (kept thin: they import qsync, call it, and show results).

    python scripts/make_notebooks.py && ruff format notebooks

Each notebook reads its parameters from QSYNC_NB_* environment variables, with defaults that run on a
fresh machine offline, so CI and the browser test can point them at temporary files.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parents[1] / "notebooks"

PARAMETERS = """import os

import qsync

# Parameters (environment variables let CI and tests run this notebook on temporary files).
SOURCE = os.environ.get("QSYNC_NB_SOURCE", "../data/wordnet_sample.jsonl")
COLLECTION = os.environ.get("QSYNC_NB_COLLECTION", "wordnet")
DB = os.environ.get("QSYNC_NB_DB", "qsync-notebooks.duckdb")
EMBEDDER = os.environ.get("QSYNC_NB_EMBEDDER", "gemini" if os.environ.get("GEMINI_API_KEY") else "hash")
DIMENSIONS = int(os.environ.get("QSYNC_NB_DIMENSIONS", "768"))"""

NOTEBOOKS = {
    "01_backfill.ipynb": [
        new_markdown_cell(
            "# 01 · Launch and watch a backfill\n\n"
            "Fill in the form and press **Start**: the job runs in the background, so the notebook stays "
            "usable. **Pause** finishes the batch in flight and leaves the job resumable; **Resume** picks "
            "it up; **Stop** cancels it. Every batch is checkpointed in the DuckDB file `DB`, so if this "
            "kernel dies, run the notebook again and press Start (or `qsync resume JOB` in a terminal): "
            "the job continues where it stopped and pays for nothing twice.\n\n"
            "With `GEMINI_API_KEY` set the embedder is Gemini; without it, an offline hashing embedder."
        ),
        new_code_cell(PARAMETERS),
        new_code_cell(
            "from qsync.notebook import Launcher\n\n"
            "launcher = Launcher(source=SOURCE, collection=COLLECTION, db=DB, embedder=EMBEDDER, dimensions=DIMENSIONS,\n"
            '                    payload_columns=["lemmas", "pos"])\n'
            "launcher"
        ),
        new_markdown_cell("Headless runs (CI) start the job from code and wait for it; in JupyterLab you press Start."),
        new_code_cell(
            'if os.environ.get("QSYNC_NB_AUTOSTART"):\n'
            "    launcher.start()\n"
            "    result = launcher.wait()\n"
            "    print(result)\n"
            '    assert result is not None and result.status == "completed", result'
        ),
        new_markdown_cell(
            "## Follow a job started elsewhere\n\n"
            "`JobMonitor.attach(JOB, db=DB)` follows a job run by another notebook or by `qsync run` in a "
            "terminal, reading the ledger once a second without disturbing the runner."
        ),
        new_code_cell(
            "from pathlib import Path\n\n"
            "from IPython.display import display\n\n"
            "from qsync.notebook import JobMonitor\n\n"
            "if Path(DB).exists():\n"
            '    # The newest job in DB (or name one: JobMonitor.attach("wordnet:wordnet_sample", db=DB)).\n'
            "    display(JobMonitor.attach(db=DB))\n"
            '    display(qsync.jobs(db=DB)[["job", "status", "processed_records", "total_records", "cost_usd"]])'
        ),
    ],
    "02_inspect_batches.ipynb": [
        new_markdown_cell(
            "# 02 · Inspect batches\n\n"
            "Every batch with its status, attempts, last error, records, tokens and cost. Filter by status, "
            "pick batches to see their records, and **Retry selected** to run them again. Records that were "
            "skipped (bad input, or refused by the embedder) are listed with their reason."
        ),
        new_code_cell(PARAMETERS + '\nJOB = os.environ.get("QSYNC_NB_JOB") or qsync.status(db=DB)["job"]\nJOB'),
        new_code_cell("from qsync.notebook import BatchInspector\n\ninspector = BatchInspector(JOB, db=DB)\ninspector"),
        new_code_cell(
            'qsync.batches(JOB, db=DB)[["batch_no", "status", "records", "attempts", "last_error", "tokens"]].head(20)'
        ),
        new_code_cell("qsync.skipped(JOB, db=DB)"),
    ],
    "03_cost_analysis.ipynb": [
        new_markdown_cell(
            "# 03 · Cost analysis\n\n"
            "Before a run: what the source will cost (tokens, dollars in standard and Batch Mode, minutes at "
            "the rate limits), without embedding anything. After (or during) a run: what the job spent, what "
            "the embedding cache and resumes saved, tokens per batch and cost over time. The hashing "
            "embedder is free, so offline every dollar figure is 0; the estimate is priced as Gemini."
        ),
        new_code_cell(PARAMETERS + '\nJOB = os.environ.get("QSYNC_NB_JOB") or qsync.status(db=DB)["job"]\nJOB'),
        new_code_cell("qsync.estimate(SOURCE, db=DB)"),
        new_code_cell("from qsync.notebook import CostPanel\n\nCostPanel(JOB, db=DB)"),
        new_code_cell("qsync.cost(JOB, db=DB).T"),
        new_code_cell(
            "import matplotlib.pyplot as plt\n\n"
            "curve = qsync.cost_over_time(JOB, db=DB)\n"
            "fig, ax = plt.subplots(figsize=(6, 2.5))\n"
            'ax.plot(curve["finished_at"], curve["cumulative_records"])\n'
            'ax.set(title="records loaded over time", ylabel="records")\n'
            "plt.show()"
        ),
    ],
}


def main() -> None:
    HERE.mkdir(exist_ok=True)
    for name, cells in NOTEBOOKS.items():
        notebook = new_notebook(cells=cells)
        notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        nbformat.write(notebook, HERE / name)
        print(f"wrote notebooks/{name}")


if __name__ == "__main__":
    main()
