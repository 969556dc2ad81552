"""A syrupy extension for golden tensors and JSON with the tolerance policy of docs/reference.md.

Four small roles, as syrupy's own extensions are built: serializer (``fv.parity.golden.serialize``), location (a
folder per model and fixed-trials id under the top-level ``snapshots/``), comparator (``matches`` decodes both
sides and compares within a named tolerance; ``--snapshot-update`` binds the exact one, so a regenerated golden is
the reference's value to the bit and agrees with the provenance written beside it) and reporter
(``diff_lines`` prints shape, dtype, max abs and rel diff and the worst index instead of a byte dump).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

from syrupy.extensions.single_file import SingleFileSnapshotExtension, WriteMode

from fv.parity.compare import compare_stage
from fv.parity.comparers import JsonComparer, comparer_for
from fv.parity.golden import EXTENSIONS, deserialize, serialize
from fv.parity.json_diff import json_norm_problems
from fv.parity.registry import stage as registry_stage
from fv.parity.tensor_diff import diff_tensors
from fv.parity.tolerance import Tolerance


class GoldenExtension(SingleFileSnapshotExtension):
    """Base; ``golden_extension`` makes a subclass bound to one folder, kind and tolerance."""

    folder: str = "snapshots"
    kind: str = "json"
    tolerance: Tolerance
    stage: str = ""  # the stage the artifact belongs to: its comparer (top heads as ranks, scored prompts' ranked ids)

    def serialize(self, data: Any, **_kw: Any) -> Any:
        raw = serialize(self.kind, data)
        return raw if self.kind == "tensor" else raw.decode("utf-8")

    @classmethod
    def dirname(cls, *, test_location: Any) -> str:
        return cls.folder

    @classmethod
    def get_snapshot_name(cls, *, test_location: Any, index: Any = 0) -> str:
        return str(index) if isinstance(index, str) else f"{test_location.testname}_{index}"

    def matches(self, *, serialized_data: Any, snapshot_data: Any) -> bool:
        if snapshot_data is None:
            return False
        return not any(True for _ in self._problems(serialized_data, snapshot_data, limit=1))

    def _problems(self, new: Any, old: Any, limit: int = 20) -> Iterator[str]:
        a, b = deserialize(self.kind, old), deserialize(self.kind, new)
        if self.kind == "tensor":
            d = diff_tensors(a, b, self.tolerance)
            if d.failed:
                yield from d.lines(self.tolerance)
            return
        comparer = comparer_for(registry_stage(self.stage)) if self.stage else JsonComparer()
        if not isinstance(comparer, JsonComparer):  # ranks of heads the src cannot tell apart may trade places
            r = compare_stage(self.stage, a, b, self.tolerance, [], head_effects=self._effects())
            yield from ([str(m) for m in r.mismatches[:limit]])
            return
        for n, (path, x, y, diff) in enumerate(comparer.walk(a, b, self.tolerance)):
            if n >= limit:
                yield "..."
                return
            yield f"{path}: golden {x!r:.80} value {y!r:.80} (abs diff {diff:.3g})"
        yield from json_norm_problems(a, b, self.tolerance)

    def _effects(self) -> Any:
        """The golden values this golden is ranked by, beside it (the indirect effects tell whether two top heads are
        separated); None when it is ranked by nothing or they are absent."""
        ranked_by = registry_stage(self.stage).ranked_by if self.stage else None
        if ranked_by is None:
            return None
        f = Path(self.folder) / f"{ranked_by}.{EXTENSIONS['tensor']}"
        return deserialize("tensor", f.read_bytes()) if f.is_file() else None

    def diff_lines(self, serialized_data: Any, snapshot_data: Any) -> Iterator[str]:
        if snapshot_data is None:
            yield "no golden file yet: regenerate from the reference with pytest -m m1 --snapshot-update --src-root <src>"
            return
        yield f"values are not within tolerance {self.tolerance.describe()} ({self.tolerance.origin})"
        yield from self._problems(serialized_data, snapshot_data)


def golden_extension(folder: Path, kind: str, tolerance: Tolerance, stage: str = "") -> type[GoldenExtension]:
    """A syrupy extension class for one artifact kind (``tensor``: binary safetensors, else JSON text) whose
    goldens live in ``folder`` and are compared under ``tolerance``.
    """
    mode = WriteMode.BINARY if kind == "tensor" else WriteMode.TEXT
    return type(
        f"Golden_{kind}",
        (GoldenExtension,),
        # syrupy < 5 reads the private names, syrupy >= 5 the public ones: both, so goldens keep their file names
        {"folder": str(folder), "kind": kind, "tolerance": tolerance, "stage": stage,
         "_file_extension": EXTENSIONS[kind], "file_extension": EXTENSIONS[kind],
         "_write_mode": mode, "write_mode": mode},
    )
