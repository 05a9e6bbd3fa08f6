import sys
from pathlib import Path

# tests/mpi.py and the workers' helpers import as top-level modules.
sys.path.insert(0, str(Path(__file__).resolve().parent))
