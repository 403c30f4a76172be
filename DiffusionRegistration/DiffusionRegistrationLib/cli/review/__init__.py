"""`diffreg review`: the review page in a browser (trame-slicer), its doors, its files and its warm runs.

Needs the `review` extra (trame-slicer with slicer-core); imported only by that command."""
