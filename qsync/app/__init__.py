"""The application path, used alike by the CLI, the Python API and the notebooks: options become a job spec
(options), the one prepare and the one run (jobs), what the API reads of jobs (reading), and runs in a background
thread with a handle (session)."""
