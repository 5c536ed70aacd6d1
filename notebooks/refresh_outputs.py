"""Execute quickstart.ipynb top to bottom and store its outputs in the file, so its plots show where
the notebook is read without running it (GitHub). Progress and warnings (stderr) are dropped, the
cells' timing metadata is not recorded, and each plot is a modest PNG (the notebook sets the dpi).

    python notebooks/refresh_outputs.py     # ~1-2 min on 2 CPU cores; rerun after editing a cell
"""

from __future__ import annotations

import sys
from pathlib import Path

NOTEBOOK = Path(__file__).resolve().parent / "quickstart.ipynb"


def strip_noise(nb) -> None:
    """Drop stderr streams (progress bars, warnings) from every code cell's outputs."""
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = [o for o in cell.outputs if not (o.output_type == "stream" and o.name == "stderr")]


def main() -> int:
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(NOTEBOOK, as_version=4)
    # run where the notebook lives, as a reader would (it writes only under a temporary directory)
    NotebookClient(nb, timeout=600, kernel_name="python3", record_timing=False,
                   resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    if errors:
        print(f"refresh_outputs: a cell failed: {errors[0].ename}: {errors[0].evalue}", file=sys.stderr)
        return 1
    strip_noise(nb)
    from mixjax.io import write_text_atomic

    write_text_atomic(NOTEBOOK, nbformat.writes(nb) + "\n")
    print(f"wrote {NOTEBOOK} ({NOTEBOOK.stat().st_size / 1e3:.0f} kB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
