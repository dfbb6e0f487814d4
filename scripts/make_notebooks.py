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
DB = os.environ.get("QSYNC_NB_DB", "qsync-data/notebooks.duckdb")
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
            "from qsync.notebook import estimate_table\n\n"
            "before = qsync.estimate(SOURCE, db=DB)  # a dict, for your own code\n"
            "estimate_table(before)"
        ),
        new_markdown_cell(
            "## Which model, which size? Evidence from your own data\n\n"
            "The table above says what a model and a size cost; this says what a smaller size loses. Gemini's "
            "embedding models are Matryoshka-trained: a smaller size is the full vector's first dimensions, "
            "renormalised. So `qsync.compare` embeds a **sample** of the source once per model, at full size "
            "(3,072), and measures every smaller size against it: of each sampled record's 10 nearest sampled "
            "records at full size, how many are still among its 10 nearest at 768, 256, 128… (with `queries`: "
            "the same for each of your queries). Next to it: the whole table's cost, time and Qdrant storage.\n\n"
            "- The sample is paid for like any job (recorded in `DB`, resumable, capped with `max_cost_usd=`), and "
            "its vectors stay in the cache: the backfill that follows, at **any** size of the same model, reuses "
            "them instead of paying again.\n"
            "- **What it means, and what it does not:** neighbour agreement with the model's own best, on your "
            "data. Not relevance: it cannot tell whether either neighbourhood is what a person wants, nor rank "
            "one model against the other (each is measured against itself).\n"
            "- Offline (no `GEMINI_API_KEY`), qsync's local emulator answers: its vectors follow the words of each "
            "text and are nested like Gemini's, so the figures show how the comparison reads, not how Gemini's "
            "sizes compare. With a key, the same cells measure Gemini on your table: 300 short records cost well under "
            "a cent; 300 texts of ~500 tokens, about $0.05 for the two models."
        ),
        new_code_cell(
            "from qsync.app.compare import sample_sentence\n"
            "from qsync.notebook.sentences import where_gemini_calls_go\n\n"
            'SAMPLE = int(os.environ.get("QSYNC_NB_SAMPLE", "300"))  # records to embed at full size, per model\n'
            'QUERIES = ["a musical instrument with strings", "a large wild animal", "to move quickly"]  # or []\n\n'
            'if os.environ.get("GEMINI_API_KEY") or os.environ.get("GOOGLE_API_KEY"):\n'
            "    print(where_gemini_calls_go())\n"
            "else:\n"
            "    from qsync.testing import start_offline\n\n"
            "    emulator = start_offline()  # a local stand-in for the Gemini API, for this kernel only\n"
            '    print(f"No GEMINI_API_KEY: Gemini is emulated locally at {emulator.url} (offline, free).")\n'
            "# What the sample costs, before anything is paid:\n"
            "print(sample_sentence(qsync.compare(SOURCE, sample=SAMPLE, queries=QUERIES, db=DB, dry_run=True)))"
        ),
        new_code_cell(
            "from qsync.notebook import show_comparison\n\n"
            "comparison = qsync.compare(SOURCE, sample=SAMPLE, queries=QUERIES, db=DB)  # .table: a DataFrame\n"
            "show_comparison(comparison)"
        ),
        new_code_cell(
            "import matplotlib.pyplot as plt\n\n"
            "from qsync.app import reading\n\n"
            "# The job's records by the clock (the panel above plots its dollars by time into the run).\n"
            "if panel.job:\n"
            "    curve = reading.cost_over_time(panel.job, db=DB)\n"
            "    fig, ax = plt.subplots(figsize=(6, 2.5))\n"
            '    ax.plot(curve["finished_at"], curve["cumulative_records"])\n'
            '    ax.set(title="records loaded, by the clock", ylabel="records")\n'
            "    ax.set_ylim(bottom=0)\n"
            "    fig.autofmt_xdate()\n"
            "    plt.show()"
        ),
    ],
    "04_images.ipynb": [
        new_markdown_cell(
            "# 04 · Images and documents\n\n"
            "Backfill a table of photos (and one of PDFs) with `gemini-embedding-2`, Google's multimodal embedding "
            "model: each record's image and its caption become **one** vector, in the same space as text, so a "
            "text query finds pictures. The notebook shows the estimate before the run, the cost after it, the "
            "records skipped with their reasons, and the nearest images to a few words.\n\n"
            "- The sample (`data/images.csv`, `data/documents.csv`): 31 real photos and scans, downscaled to "
            "512 px, and 4 short PDFs; sources and licences per file in `data/MEDIA-LICENSES.md`. A few rows are "
            "**bad on purpose** (a missing file, a download cut short, an HTML page named `.jpg`): qsync skips each "
            "with its reason before anything is paid. One PDF has 8 pages, more than the model reads: it is cut "
            "into two windows of pages, each a point.\n"
            "- With `GEMINI_API_KEY` set, this calls Gemini (less than a cent). Without it, qsync's **local "
            "emulator** of the Gemini API answers instead: the same SDK, requests, token counts and prices, "
            "nothing billed, nothing sent anywhere."
        ),
        new_code_cell(
            "import os\n\n"
            "import qsync\n"
            "from qsync.notebook.sentences import where_gemini_calls_go\n\n"
            "# Parameters (environment variables let CI and tests run this notebook on temporary files).\n"
            'IMAGES = os.environ.get("QSYNC_NB_IMAGES", "../data/images.csv")\n'
            'DOCUMENTS = os.environ.get("QSYNC_NB_DOCUMENTS", "../data/documents.csv")\n'
            'COLLECTION = os.environ.get("QSYNC_NB_MEDIA_COLLECTION", "media")\n'
            'DB = os.environ.get("QSYNC_NB_DB", "qsync-data/notebooks.duckdb")\n'
            'DIMENSIONS = int(os.environ.get("QSYNC_NB_MEDIA_DIMENSIONS", "768"))  # gemini-embedding-2: 128 to 3,072\n'
            'MODEL = "gemini-embedding-2"  # the model that embeds images and PDFs\n\n'
            'if os.environ.get("GEMINI_API_KEY") or os.environ.get("GOOGLE_API_KEY"):\n'
            "    print(where_gemini_calls_go())\n"
            "else:\n"
            "    from qsync.testing import start_offline\n\n"
            "    emulator = start_offline()  # a local stand-in for the Gemini API, for this kernel only\n"
            '    print(f"No GEMINI_API_KEY: Gemini is emulated locally at {emulator.url} (offline, free).")'
        ),
        new_markdown_cell(
            "## The table\n\n"
            "One row per image: its path (relative to the CSV), a caption and a category. The caption is embedded "
            "with the image; leave `text_column` out to embed images alone. The last three rows are the bad ones."
        ),
        new_code_cell(
            "import pandas as pd\n\n"
            "from qsync.notebook import show\n\n"
            "table = pd.read_csv(IMAGES)\n"
            "show(pd.concat([table.head(3), table.tail(3)]))"
        ),
        new_markdown_cell(
            "## Before the run: what it will cost\n\n"
            "`qsync.estimate` plans the job without embedding anything: it reads every file (that is how the bad "
            "ones are found), counts each image as ~258 tokens and each PDF page as much (Google prices images, "
            "not tokens: the figure is inferred from its price), and the captions at ~4 bytes a token. Image "
            "tokens cost 0.45 USD per million, text tokens 0.20 USD."
        ),
        new_code_cell(
            "from qsync.formatting import count, usd\n\n"
            'before = qsync.estimate(IMAGES, text_column="caption", image_column="image", model=MODEL, db=DB)\n'
            "rows = [\n"
            '    ("rows in the table", count(before["records"])),\n'
            '    ("skipped while planning (bad files)", count(before["skipped_records"])),\n'
            '    ("records to embed", count(before["texts_to_embed"])),\n'
            '    ("tokens", count(before["tokens"])),\n'
            '    ("of which images", count(before["media_tokens"])),\n'
            '    ("cost", usd(before["cost_usd"])),\n'
            "]\n"
            'print(before["tokens_basis"])\n'
            'show(pd.DataFrame(rows, columns=["", "estimate"]))'
        ),
        new_markdown_cell(
            "## Backfill\n\n"
            "Two jobs, one collection: the images, then the PDFs (a job has one media column). Each shows its "
            "progress here and records its estimate when it plans. Run the notebook again and each becomes a "
            "re-sync (`media:images#2`) that finds every file unchanged and pays for nothing."
        ),
        new_code_cell(
            'common = {"collection": COLLECTION, "embedder": "gemini", "model": MODEL, "dimensions": DIMENSIONS, "db": DB}\n'
            'images = qsync.run(IMAGES, text_column="caption", image_column="image", payload_columns=["category"], '
            "**common)\n"
            'documents = qsync.run(DOCUMENTS, text_column="title", document_column="document", **common)\n'
            "for job in (images, documents):\n"
            '    print(f"{job.job_id}: {job.status}, {job.run_records} records in {job.elapsed_s:.1f} s")'
        ),
        new_markdown_cell(
            "## Skipped, with their reasons\n\n"
            "Found while planning, so none of them cost anything; the rest of each job loaded."
        ),
        new_code_cell(
            "skipped = pd.concat([qsync.skipped(job.job_id, db=DB) for job in (images, documents)])\n"
            'show(skipped[["record_id", "reason"]], "Nothing was skipped.")'
        ),
        new_markdown_cell(
            "## After the run: the estimate beside the actual\n\n"
            "Tokens and dollars as recorded when each job was planned, against what the answers said. Then the "
            "images job's tokens by modality: the API reports one total per request, and qsync splits it between "
            "captions and pictures by its own estimates when the per-modality detail does not reach it "
            "(`google-genai` drops it): the `split` column says so."
        ),
        new_code_cell(
            "from qsync.app import reading\n"
            "from qsync.notebook import estimate_beside_actual\n\n"
            "for job in (images, documents):\n"
            "    print(job.job_id)\n"
            "    display(estimate_beside_actual(job.job_id, db=DB))\n"
            "show(reading.tokens_by_modality(images.job_id, db=DB))"
        ),
        new_markdown_cell(
            "## Search across modalities\n\n"
            "`qsync.search` embeds your words with the query instruction and returns the nearest records of the "
            "collection, images and PDFs alike; `thumbnails` shows them as pictures (a PDF as a page icon), with "
            "their score and caption.\n\n"
            "**Offline, read the hits with care:** the emulator cannot see. It places each record by the words "
            "of its caption (or title), so `a cat` finds the photo captioned *Chelsea the cat* and the PDF titled "
            "*Looking after a house cat*, and a query that shares no word with any caption ranks at random. "
            "With a key, Gemini embeds the pixels and the pages themselves."
        ),
        new_code_cell(
            'from qsync.notebook import thumbnails\n\nthumbnails(qsync.search(images.job_id, "a cat", limit=6, db=DB))'
        ),
        new_code_cell('thumbnails(qsync.search(images.job_id, "a cup of espresso", limit=6, db=DB))'),
        new_markdown_cell("Your own words: type and press Enter (or **Search**)."),
        new_code_cell("from qsync.notebook import SearchBox\n\nSearchBox(images.job_id, db=DB, limit=6)"),
    ],
}

# Long documents: records over the model's limit cut into chunks, a point each; search answers records.
NOTEBOOKS["05_long_documents.ipynb"] = [
    new_markdown_cell("""# 05 · Long documents: chunks, never skips

Records longer than the model takes (2,048 tokens for `gemini-embedding-001`, 8,192 for `gemini-embedding-2`) are **cut into chunks** at paragraphs, then sentences, then words, and each chunk is a point of its own. A record that fits stays one point, exactly as before. Each chunk's payload is its record's payload plus `chunk_no`, `chunk_count`, `char_start` and `char_end` (its characters in the record's text), so a search can show the passage; a search answers **records**, each scored by its best chunk.

The sample is 79 real long documents: the topics of Python's own reference (`help("if")`), 200 to 62,000 characters each (`data/PYTHON-REFERENCE-LICENSE.md`). Without a `GEMINI_API_KEY`, Gemini is emulated locally: offline and free."""),
    new_code_cell("""import os

import qsync
from qsync.testing import offline_emulator, start_offline

# Parameters (environment variables let CI and tests run this notebook on temporary files).
SOURCE = os.environ.get("QSYNC_NB_DOCS", "../data/python_reference.jsonl")
COLLECTION = os.environ.get("QSYNC_NB_DOCS_COLLECTION", "reference")
DB = os.environ.get("QSYNC_NB_DB", "qsync-data/notebooks.duckdb")
MODEL = "gemini-embedding-001"  # 2,048 tokens a text: most of these documents are longer
CHUNK_TOKENS = None  # None: chunks as large as the model takes; a number asks for smaller ones; 0 skips long texts

if offline_emulator() is None and (os.environ.get("GEMINI_API_KEY") or os.environ.get("GOOGLE_API_KEY")):
    print("A Gemini API key is set: this notebook calls Gemini (about $0.02 for the whole table).")
else:
    emulator = start_offline()  # a local stand-in for the Gemini API, for this kernel only
    print(f"No GEMINI_API_KEY: Gemini is emulated locally at {emulator.url} (offline, free).")"""),
    new_markdown_cell(
        "## The table\n\nOne row per document; the longest are about seven times what the model takes in one text (2,048 tokens)."
    ),
    new_code_cell("""import pandas as pd

from qsync.notebook import show

table = pd.read_json(SOURCE, lines=True)
table["characters"] = table["text"].str.len()
table["tokens (~4 bytes each)"] = table["text"].str.encode("utf-8").str.len() // 4
show(table.sort_values("characters", ascending=False)[["id", "title", "characters", "tokens (~4 bytes each)"]].head(5))"""),
    new_markdown_cell("""## Before the run: records → chunks, per model

`qsync.estimate` plans the job in a scratch file (nothing is embedded): the chunks are cut exactly as the run will cut them, so their number, tokens and dollars are the run's. With a larger limit, `gemini-embedding-2` cuts fewer chunks for the same tokens."""),
    new_code_cell("""from qsync.money.estimate import compare_models

show(compare_models(SOURCE, chunk_tokens=CHUNK_TOKENS, db=DB)[
    ["model", "records", "chunks", "skipped_records", "tokens", "cost_usd", "cost_usd_batch_mode", "expected_minutes"]
])"""),
    new_markdown_cell("## The run"),
    new_code_cell("""result = qsync.run(
    SOURCE, collection=COLLECTION, model=MODEL, payload_columns=["title"], chunk_tokens=CHUNK_TOKENS, db=DB
)
status = qsync.status(result.job_id, db=DB)
print(f"{result.job_id}: {status['status']} — {status['loaded_records']:,} records loaded as "
      f"{status['total_chunks']:,} points, {status['skipped_records']} skipped")"""),
    new_markdown_cell("""## Chunks per record

`reading.chunks` lists what the job embedded: a row per whole record, or per chunk of a long one, with its characters in the record and its tokens (estimated at ~4 bytes a token). Chunks are sized by an estimate from above (the API's tokenizer is not available offline), so that none is refused as too long."""),
    new_code_cell("""import matplotlib.pyplot as plt

from qsync.app import reading

chunks = reading.chunks(result.job_id, db=DB)
per_record = chunks.groupby("record_id")["chunk_count"].first()
fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.2))
left.hist(per_record, bins=range(1, int(per_record.max()) + 2), color="#4c72b0")
left.set(title="chunks per record", xlabel="chunks", ylabel="records")
right.hist(chunks["tokens"], bins=30, color="#55a868")
right.axvline(2048, color="#c44e52", linestyle="--", label="the model's limit")
right.set(title="tokens per text embedded (~4 bytes a token)", xlabel="tokens", ylabel="texts")
right.legend()
fig.tight_layout()
plt.show()
longest = chunks[chunks["record_id"] == per_record.idxmax()]
show(longest[["record_id", "chunk", "char_start", "char_end", "tokens", "batch_no"]].head(4))"""),
    new_markdown_cell("""## Search: records, found by a passage

A record is one row, scored by its best chunk, whose passage is shown as `text`; `chunk` says which one it is. `chunks=True` lists every chunk instead. Offline, the emulator places texts by their words, so a query that shares words with a passage finds it."""),
    new_code_cell("""hits = qsync.search(result.job_id, "what happens when the iterable of a for loop is modified", limit=5, db=DB)
show(hits.assign(text=hits["text"].str.slice(0, 160) + "…"))"""),
    new_code_cell("""chunk_hits = qsync.search(result.job_id, "exception raised by a generator", limit=6, chunks=True, db=DB)
show(chunk_hits.assign(text=chunk_hits["text"].str.slice(0, 120) + "…"))"""),
    new_markdown_cell("Your own words: type and press Enter (or **Search**)."),
    new_code_cell("""from qsync.notebook import SearchBox

SearchBox(result.job_id, db=DB, limit=5)"""),
]


def main() -> None:
    HERE.mkdir(exist_ok=True)
    for name, cells in NOTEBOOKS.items():
        for i, cell in enumerate(cells):
            cell.id = f"nb{name[:2]}-{i:02d}"  # stable ids: regenerating changes only the cells that changed
        notebook = new_notebook(cells=cells)
        notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        nbformat.write(notebook, HERE / name)
        print(f"wrote notebooks/{name}")


if __name__ == "__main__":
    main()
