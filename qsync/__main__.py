from qsync.cli.main import entry

entry()
