from kseg.cli import run

run()
