from dataplane.cli import run

run()
