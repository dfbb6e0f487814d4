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
            "Type a source (a Parquet, CSV or JSON-lines file, or `sql:SELECT …`) and press **Read columns**: "
            "the id and text columns are guessed, and you pick the payload columns from the list. Press "
            "**Start**: the job runs in the background and the notebook stays usable.\n\n"
            "- **Pause** stops after the batches in flight (their answers are saved); **Resume** continues.\n"
            "- **Cancel job…** ends the job for good, after asking; vectors already paid for stay reusable.\n"
            "- **Budget (USD)** caps the job's whole spend across resumes; leave it empty for no cap.\n\n"
            "Every batch is checkpointed in the DuckDB file `DB`. If the kernel dies, run the notebook again: the "
            "form finds its job in `DB` and shows it as it is; **Resume** (or Start) continues it and pays for "
            "nothing twice. With `GEMINI_API_KEY` set the embedder is Gemini; without it, an offline hashing "
            "embedder (free)."
        ),
        new_code_cell(PARAMETERS),
        new_code_cell(
            "from qsync.notebook import Launcher\n\n"
            "launcher = Launcher(source=SOURCE, collection=COLLECTION, db=DB, embedder=EMBEDDER, dimensions=DIMENSIONS)\n"
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
            "## Search the collection\n\n"
            "Once a job completes, the launcher shows a search box. From code, `qsync.search(JOB, TEXT)` returns "
            "the nearest records as a DataFrame (the job's own embedder makes the query vector); "
            "`qsync search JOB TEXT` does the same in a terminal."
        ),
        new_code_cell(
            "from qsync.notebook import show\n\n"
            'if launcher.job and qsync.status(launcher.job, db=DB)["status"] == "completed":\n'
            '    display(show(qsync.search(launcher.job, "a musical instrument with strings", limit=5, db=DB)))'
        ),
        new_markdown_cell(
            "## From a cell, without the form\n\n"
            "`qsync.run(df, collection=…)` shows the same live progress here and returns when the job ends; "
            "`handle = qsync.start(df, collection=…)` (or `qsync.run(..., background=True)`) returns at once "
            "with a handle: `handle.pause()`, `handle.wait()`, `handle.result`.\n\n"
            "## Follow a job started elsewhere\n\n"
            "`JobMonitor.attach(JOB, db=DB)` follows a job run by another notebook or by `qsync run` in a "
            "terminal, reading the ledger once a second without disturbing the runner."
        ),
        new_code_cell(
            "from qsync.notebook import JobMonitor\n"
            "from qsync.notebook.picker import job_choices\n\n"
            "if not job_choices(DB):\n"
            '    print("No job in DB yet: press Start above.")\n'
            "else:\n"
            '    # The newest job in DB (or name one: JobMonitor.attach("wordnet:wordnet_sample", db=DB)).\n'
            "    display(JobMonitor.attach(db=DB))"
        ),
    ],
    "02_inspect_batches.ipynb": [
        new_markdown_cell(
            "# 02 · Inspect batches\n\n"
            "Pick a job (newest first). Its batches, page by page, with status, attempts, last error, records, "
            "tokens and cost; filter by status or by the text of the error. Type a batch number to see its "
            "records; **Retry failed batches** runs them again and the table follows. Records that were "
            "skipped (bad input, or refused by the embedder) are listed with their reason."
        ),
        new_code_cell(PARAMETERS + '\nJOB = os.environ.get("QSYNC_NB_JOB")  # None: the picker opens the newest job'),
        new_code_cell("from qsync.notebook import BatchInspector\n\ninspector = BatchInspector(JOB, db=DB)\ninspector"),
        new_markdown_cell("The same figures as DataFrames, for your own analysis:"),
        new_code_cell(
            "from qsync.notebook import show\n\n"
            "if inspector.job:\n"
            '    failed = qsync.batches(inspector.job, status="failed", db=DB)\n'
            '    display(show(failed[["batch_no", "records", "attempts", "last_error", "tokens", "cost_usd"]], '
            '"No failed batch."))\n'
            '    display(show(qsync.skipped(inspector.job, db=DB).head(20), "No record was skipped."))'
        ),
    ],
    "03_cost_analysis.ipynb": [
        new_markdown_cell(
            "# 03 · Cost analysis\n\n"
            "Pick a job (newest first). The estimate recorded when the job was planned stands beside what it "
            "actually spent (tokens, dollars, minutes, error in %); then what the embedding cache and resumes "
            "saved, and a what-if table for the same records: another model, other dimensions, standard or "
            "Batch Mode, and the storage the vectors need in Qdrant. The hashing embedder is free, so offline "
            "the job's own dollars are $0; the what-if table prices its records as Gemini."
        ),
        new_code_cell(PARAMETERS + '\nJOB = os.environ.get("QSYNC_NB_JOB")  # None: the picker opens the newest job'),
        new_code_cell("from qsync.notebook import CostPanel\n\npanel = CostPanel(JOB, db=DB)\npanel"),
        new_markdown_cell(
            "## Before running a new source\n\n"
            "`qsync.estimate(SOURCE)` prices a source you have not run yet (nothing is embedded; texts already in "
            "`DB`'s cache are not counted)."
        ),
        new_code_cell(
            "import pandas as pd\n\n"
            "from qsync.notebook import show\n\n"
            "before = qsync.estimate(SOURCE, db=DB)\n"
            'show(pd.DataFrame([(k, v) for k, v in before.items() if k != "skip_reasons"], columns=["", "estimate"]))'
        ),
        new_code_cell(
            "import matplotlib.pyplot as plt\n\n"
            "# The job's records by the clock (the panel above plots its dollars by time into the run).\n"
            "if panel.job:\n"
            "    curve = qsync.cost_over_time(panel.job, db=DB)\n"
            "    fig, ax = plt.subplots(figsize=(6, 2.5))\n"
            '    ax.plot(curve["finished_at"], curve["cumulative_records"])\n'
            '    ax.set(title="records loaded, by the clock", ylabel="records")\n'
            "    ax.set_ylim(bottom=0)\n"
            "    fig.autofmt_xdate()\n"
            "    plt.show()"
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
