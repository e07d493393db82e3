import sys

from .cli import bench_cli

sys.exit(bench_cli())
