"""Clear the outputs of notebooks in place (what nbstripout does): `make strip-notebooks`."""
import sys

import nbformat


def strip(path: str) -> bool:
    """Clear outputs, execution counts and widget state; True if the file changed."""
    nb = nbformat.read(path, as_version=4)
    before = nbformat.writes(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
        cell.metadata.pop("execution", None)
    nb.metadata.pop("widgets", None)
    after = nbformat.writes(nb)
    if after != before:
        with open(path, "w", encoding="utf-8") as f:
            f.write(after)
    return after != before


if __name__ == "__main__":
    for p in sys.argv[1:]:
        if strip(p):
            print("stripped", p)
