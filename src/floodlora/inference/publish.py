"""What `map` adds beside its outputs so that people without Python can use them.

Called at the end of :func:`floodlora.inference.mapping.run_map` with the summary it wrote: lists
the viewer and the STAC Item in ``summary['files']``, writes ``index.html`` (the offline web map,
:mod:`floodlora.inference.viewer`) and ``item.json`` (:mod:`floodlora.inference.stac_out`) from the
files the summary lists, and rewrites ``summary.json`` so that it names them too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from floodlora.inference.stac_out import ITEM_JSON, write_item

SUMMARY_JSON = "summary.json"


def publish_map(out_dir: str | Path, summary: dict[str, Any]) -> dict[str, Any]:
    """index.html + item.json beside a map's outputs; returns the summary with both listed."""
    from floodlora.inference.viewer import VIEWER_HTML, write_viewer
    from floodlora.io import atomic_write_json

    out_dir = Path(out_dir)
    files = summary.setdefault("files", {})
    files["viewer"] = VIEWER_HTML
    files["stac_item"] = ITEM_JSON
    atomic_write_json(out_dir / SUMMARY_JSON, summary)
    write_viewer(out_dir, summary)
    write_item(out_dir, summary)
    return summary
