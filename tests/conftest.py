import sys
from pathlib import Path

# conversion_scripts/ is a folder of runnable scripts, not part of the installed package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
