"""A cohort through 3D Slicer: the module's Logic over a manifest, one .mrb scene per case.

    Slicer --no-main-window --python-script scripts/slicer_cohort.py -- MANIFEST OUT [options]
    python scripts/slicer_cohort.py MANIFEST OUT [options]            # headless, PyPI slicer-core

The manifest is the one ``seghirescam batch`` reads (case_id, ct, seg, segment, optional point and
target_class). Per case: the CT and the segment are put into a fresh scene, the Logic
(``SegHiResCAMLogic.process``) adds the heatmaps, the slice views get the CT as background and
the first heatmap as foreground, and the scene is written to ``OUT/<case_id>.mrb`` (atomically)
with ``OUT/<case_id>.json`` (status, key, seconds, error) written last. The loop is
``seghirescam batch``'s (``seghirescam.cohort.loop.run_cases``): a case whose record says "ok"
with the same key (inputs, model and settings) is skipped, a failing case is recorded and the
run goes on. Exit code: 0 all ok, 1 some case failed, 2 bad manifest or options, 130 Ctrl-C.
A manifest point becomes a markups point: the Logic's M is then the disc of
``DEFAULT_POINT_RADIUS`` pixels around it, as in ``seghirescam batch``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from pathlib import Path

try:
    import seghirescam  # noqa: F401 - installed package, or the extension's module folder in Slicer
except ImportError:  # running from a checkout: the package lives in SegHiResCAM/
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "SegHiResCAM"))

import numpy as np
import slicer
import vtk

from seghirescam.atomic import atomic_path, write_json_atomic
from seghirescam.cam.engine import DEFAULT_METHODS
from seghirescam.cohort.loop import run_cases
from seghirescam.cohort.manifest import CaseRow, check_output_names, read_manifest
from seghirescam.cohort.resume import case_key, with_model_digest
from seghirescam.cohort.settings import BatchSettings
from seghirescam.ct.cases import prepare_case, read_label_names
from seghirescam.ct.outputs import write_case_outputs
from seghirescam.mrml.logic import SegHiResCAMLogic

logger = logging.getLogger("slicer_cohort")
IN_APP = hasattr(slicer, "app") and getattr(slicer, "mrmlScene", None) is not None
VIEWS = (("Red", "Axial"), ("Yellow", "Sagittal"), ("Green", "Coronal"))


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Options after the script name (a leading "--", as Slicer's command line passes it, is dropped)."""
    parser = argparse.ArgumentParser(prog="slicer_cohort.py", description=__doc__.splitlines()[0])
    parser.add_argument("manifest", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--model", type=Path, help="weights file (default: the shipped model)")
    parser.add_argument("--card", type=Path, help="model card (default: <model>.card.json)")
    parser.add_argument("--method", action="append", help="repeatable; default: both methods")
    parser.add_argument("--layer", action="append", help="repeatable; default: the deepest")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--label-names", type=Path, help="JSON {value: name} for segment names")
    return parser.parse_args(argv[1:] if argv[:1] == ["--"] else argv)


def new_scene() -> tuple[slicer.vtkMRMLScene, object, object]:
    """A clean scene, a colour logic, and what must stay alive while the scene is used: the
    application's scene, or a headless one with the module logics the Logic relies on."""
    if IN_APP:
        slicer.mrmlScene.Clear(0)
        return slicer.mrmlScene, slicer.modules.colors.logic(), None
    scene, app = slicer.vtkMRMLScene(), slicer.vtkSlicerApplicationLogic()
    app.SetMRMLScene(scene)
    logics = {"Colors": slicer.vtkSlicerColorLogic(), "Volumes": slicer.vtkSlicerVolumesLogic(),
              "Segmentations": slicer.vtkSlicerSegmentationsModuleLogic(), "Markups": slicer.vtkSlicerMarkupsLogic()}
    shown = vtk.vtkObject.GetGlobalWarningDisplay()
    vtk.vtkObject.GlobalWarningDisplayOff()  # headless there are no colour files to find: expected
    try:
        for name, logic in logics.items():
            logic.SetMRMLApplicationLogic(app)
            logic.SetMRMLScene(scene)
            app.SetModuleLogic(name, logic)
    finally:
        vtk.vtkObject.SetGlobalWarningDisplay(shown)
    return scene, logics["Colors"], (app, logics)


def add_case_nodes(scene, row: CaseRow, case) -> tuple:
    """CT volume, a one-segment segmentation and (for a point) a markups node, all on the CT's grid.

    Arrays are (k, j, i); the IJK-to-RAS matrix comes from the CT file's geometry.
    """
    matrix = slicer.util.vtkMatrixFromArray(case.ct.geometry.ijk_to_ras())
    ct = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", row.case_id)
    ct.SetIJKToRASMatrix(matrix)
    slicer.util.updateVolumeFromArray(ct, np.ascontiguousarray(case.ct.array))
    ct.CreateDefaultDisplayNodes()
    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "segment labels")
    labelmap.SetIJKToRASMatrix(matrix)
    slicer.util.updateVolumeFromArray(labelmap, case.segment.astype(np.uint8))
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "segmentation")
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(ct)
    if not slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmap, segmentation):
        raise RuntimeError("importing the segment into a segmentation failed")
    scene.RemoveNode(labelmap)
    segment_id = segmentation.GetSegmentation().GetNthSegmentID(0)
    segmentation.GetSegmentation().GetSegment(segment_id).SetName(case.segment_name)
    point = None
    if row.point:
        point = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "pixel set point")
        point.AddControlPoint(*(float(v) for v in case.ct.geometry.ras_of_index(row.point)))
    return ct, segmentation, segment_id, point


def show_over_ct(scene, ct, heat) -> None:
    """Slice views with the CT as background and the heatmap as foreground (made headless if missing)."""
    composites = [scene.GetNodesByClass("vtkMRMLSliceCompositeNode").GetItemAsObject(i)
                  for i in range(scene.GetNodesByClass("vtkMRMLSliceCompositeNode").GetNumberOfItems())]
    if not composites:
        slicer.vtkMRMLSliceNode.AddDefaultSliceOrientationPresets(scene, True)
        for name, orientation in VIEWS:
            logic = slicer.vtkMRMLSliceLogic()
            logic.SetMRMLScene(scene)
            logic.AddSliceNode(name).SetOrientation(orientation)
            composites.append(logic.GetSliceCompositeNode())
            logic.SetMRMLScene(None)
    for composite in composites:
        composite.SetBackgroundVolumeID(ct.GetID())
        composite.SetForegroundVolumeID(heat.GetID())
        composite.SetForegroundOpacity(0.5)


def run_case(row: CaseRow, args: argparse.Namespace, settings: BatchSettings, loaded) -> dict:
    """One case into ``OUT/<case_id>.mrb``; returns the record's details."""
    scene, colors, _alive = new_scene()
    case = prepare_case(row.ct, row.seg, loaded, label_values=row.label_values, segment_name=row.segment_name,
                        label_names=settings.label_names, target_class=row.target_class,
                        pixel_set="point" if row.point else "segment", point=row.point)  # M as the Logic makes it
    ct, segmentation, segment_id, point = add_case_nodes(scene, row, case)
    logic = SegHiResCAMLogic(scene, colorLogic=colors)
    results = []
    heatmaps = logic.process(ct, segmentation, segment_id, model=loaded, targetClass=case.target_class,
                             layers=settings.layers, methods=settings.methods,
                             pixelSet="point" if row.point else "segment", pointNode=point, device=args.device,
                             onResult=results.append)
    # The heatmap files, panel and statistics as `seghirescam explain` and `batch` write them (one writer),
    # beside the scene bundle. The writer empties the dict it is given (it never changes the arrays), so it gets its own.
    result = dataclasses.replace(results[0], maps=dict(results[0].maps))
    folder = args.out / row.case_id
    folder.mkdir(parents=True, exist_ok=True)
    written = write_case_outputs(folder, case, result, extension=".nrrd", figure=settings.figure)
    show_over_ct(scene, ct, next(iter(heatmaps.values())))
    final = args.out / f"{row.case_id}.mrb"
    with atomic_path(final, keep_name=True) as temporary:  # the bundle keeps the case's name inside
        if not scene.WriteToMRB(str(temporary)):
            raise OSError(f"could not write {final}")
    first = next(iter(heatmaps.values()))
    return {"scene": final.name, "heatmaps": [node.GetName() for node in heatmaps.values()],
            "files": {name: str(Path(path).relative_to(args.out)) for name, path in written["files"].items()},
            "map_statistics": written["map_statistics"],
            "device": first.GetAttribute("SegHiResCAM.Device"),
            "slices_explained": int(first.GetAttribute("SegHiResCAM.SlicesExplained"))}


class SlicerCaseJob:
    """A case of the cohort (a ``seghirescam.cohort.loop.CaseJob``): one scene bundle and its record."""

    def __init__(self, args: argparse.Namespace, settings: BatchSettings, loaded) -> None:
        self.args, self.settings, self.loaded = args, settings, loaded

    def _record_path(self, row: CaseRow) -> Path:
        return self.args.out / f"{row.case_id}.json"

    def key(self, row: CaseRow) -> str:
        return case_key(row, self.settings)

    def finished(self, row: CaseRow, key: str) -> dict | None:
        previous = read_record_file(self._record_path(row))
        scene = self.args.out / str(previous.get("scene"))
        return previous if previous.get("status") == "ok" and previous.get("key") == key and scene.is_file() else None

    def run(self, row: CaseRow, key: str, started: float) -> dict:
        details = run_case(row, self.args, self.settings, self.loaded)
        return self._publish(row, key, {"status": "ok", **details}, time.perf_counter() - started)

    def failed(self, row: CaseRow, error: BaseException, key: str | None, seconds: float) -> dict:
        record = {"status": "failed", "error": {"type": type(error).__name__, "message": str(error)}}
        return self._publish(row, key, record, seconds)

    def _publish(self, row: CaseRow, key: str | None, record: dict, seconds: float) -> dict:
        """Write the case's record (its last output) and return it."""
        record = {"case_id": row.case_id, "key": key, **record, "seconds": round(seconds, 2)}
        write_json_atomic(self._record_path(row), record)
        return record


def main(argv: list[str]) -> int:
    """Run the cohort; returns the exit code."""
    args = parse_args(argv)
    args.out = args.out.resolve()  # Slicer writes scene bundles to full paths only
    try:
        rows = read_manifest(args.manifest)
        check_output_names(rows, (), lambda case_id: (case_id, f"{case_id}.mrb", f"{case_id}.json"))
        settings = BatchSettings(model=str(args.model) if args.model else None,
                                 card=str(args.card) if args.card else None,
                                 methods=tuple(args.method or DEFAULT_METHODS),
                                 layers=tuple(args.layer) if args.layer else None,
                                 label_names=read_label_names(args.label_names) if args.label_names else None,
                                 extension=".mrb")
        settings = with_model_digest(settings)
        loaded = settings.load_model()
    except (ValueError, OSError) as error:
        logger.error("%s", error)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    try:
        records = run_cases(rows, SlicerCaseJob(args, settings, loaded), log=logger)
    except KeyboardInterrupt:
        logger.warning("interrupted")
        return 130
    failed = sum(record["status"] != "ok" for record in records)
    logger.info("%d of %d cases ok; scenes in %s", len(rows) - failed, len(rows), args.out)
    return 1 if failed else 0


def read_record_file(path: Path) -> dict:
    """A case's JSON record, or {} when there is none or it cannot be read."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    code = main(sys.argv[1:])
    if IN_APP:
        slicer.util.exit(code)
    else:
        sys.exit(code)
