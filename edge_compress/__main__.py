from edge_compress.cli import run

run()
