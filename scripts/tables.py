"""``crnn-tables`` as a script: paper-style tables and plots from sweeps (see :mod:`crnn.tables`).

python scripts/tables.py outputs/multirun/<date>/<time> [--metric test/acc1] [--out DIR]
"""

from crnn.tables import main

if __name__ == "__main__":
    main()
