"""DICOM objects made with highdicom from a reading of one image: a Segmentation (BINARY, one segment per
structure, coded in SNOMED CT), a Comprehensive 3D SR following TID 1500 (each finding a qualitative
evaluation, each box a planar ROI), and, for a PNG or JPEG source, a Secondary Capture of the pixels first so
that the SEG and SR have a DICOM instance to reference."""

from __future__ import annotations

import copy
import re
import warnings
from dataclasses import dataclass, field

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from services import vocabulary

MANUFACTURER = "CXR Review"
MODEL_NAME = "cxr-review"
SOFTWARE_VERSION = "0.1.0"
RESEARCH_USE = "Research use only: not for clinical decisions"
_AS = re.compile(r"^\d{3}[DWMY]$")


@dataclass
class Reading:
    """What one observer (a reader, or the AI) says of one image."""

    observer: str  # reader name, or model id for the AI
    labels: dict[str, str]  # finding: present | absent | uncertain
    boxes: list[dict]  # {label, x, y, w, h, score?}
    label_map: np.ndarray | None = None
    polygons: list[dict] = field(default_factory=list)  # {label, points: [[x, y], ...]}
    models: dict[str, dict] = field(default_factory=dict)  # task: {id, version, weights_sha256}: AI readings
    version_id: int | None = None  # the annotation version read, with its status and time (readers' readings)
    status: str | None = None
    saved_at: str | None = None

    @property
    def is_ai(self) -> bool:
        return bool(self.models)


def code(scheme: str, value: str, meaning: str) -> hd.sr.CodedConcept:
    return hd.sr.CodedConcept(value=value, scheme_designator=scheme, meaning=meaning)


def finding_code(label: str) -> hd.sr.CodedConcept:
    return code(*vocabulary.FINDING_CODES[label])


def _clean(ds: Dataset) -> Dataset:
    """Leave out source values that would make the derived object invalid (NIH's sample has Patient's Age
    "62" where AS wants "062Y"), and declare this project's local coding scheme where its codes are used."""
    if "PatientAge" in ds and not _AS.match(str(ds.PatientAge or "")):
        del ds.PatientAge
    if any(getattr(e, "value", None) == vocabulary.LOCAL_SCHEME for e in ds.iterall() if e.keyword == "CodingSchemeDesignator"):
        scheme = Dataset()
        scheme.CodingSchemeDesignator = vocabulary.LOCAL_SCHEME
        scheme.CodingSchemeName = "CXR Review local codes"
        scheme.CodingSchemeResponsibleOrganization = "CXR Review"
        ds.CodingSchemeIdentificationSequence = [scheme]
    return ds


# Type 2 attributes of the patient and study modules that highdicom copies from the source into a SEG or SR: present
# (empty where unknown) in every valid image, missing in some real ones (NIH's DX sample has no Patient's Birth Date).
_TYPE2_FROM_SOURCE = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                      "ReferringPhysicianName", "StudyID", "AccessionNumber")  # fmt: skip


def with_type2(source: Dataset) -> Dataset:
    """`source` (a copy) with the Type 2 attributes a derived object copies, empty where the source lacks them."""
    missing = [k for k in _TYPE2_FROM_SOURCE if k not in source]
    if not missing:
        return source
    out = copy.deepcopy(source)  # a header without pixels: small
    for k in missing:
        setattr(out, k, "")
    return out


def secondary_capture(
    pixels: np.ndarray, study: dict, pixel_spacing: tuple[float, float] | None, pixel_sha256: str
) -> Dataset:
    """A Secondary Capture of an 8-bit grey image (MONOCHROME2) in the image's study. Its UIDs derive from the
    pixels, so that SEG and SR objects exported at different times reference the same instance."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # highdicom's person-name style hints
        sc = hd.sc.SCImage(
            pixel_array=np.ascontiguousarray(pixels.astype(np.uint8)), photometric_interpretation="MONOCHROME2",
            bits_allocated=8, coordinate_system="PATIENT", study_instance_uid=study["study_instance_uid"],
            series_instance_uid=generate_uid(entropy_srcs=["cxr-review-sc-series", study["study_instance_uid"]]),
            series_number=900, sop_instance_uid=generate_uid(entropy_srcs=["cxr-review-sc", pixel_sha256]),
            instance_number=1,
            manufacturer=MANUFACTURER, patient_id=study.get("patient_id") or "", patient_name=study.get("patient_name") or "",
            patient_sex=study.get("patient_sex") or None, study_date=study.get("study_date"),
            pixel_spacing=pixel_spacing,
            # A PNG or JPEG records no orientation; highdicom needs one, and frontal chest films are displayed
            # with the patient's left to the right of the picture and the feet down.
            patient_orientation=("L", "F"),
        )  # fmt: skip
    sc.BodyPartExamined = "CHEST"  # also says it is not a paired structure (no Laterality needed)
    sc.SeriesDescription = "CXR Review: secondary capture of an imported PNG/JPEG"
    sc.ImageComments = "Made so that the segmentation and structured report can reference the image"
    return sc


def segmentation(source: Dataset, reading: Reading) -> Dataset | None:
    """A BINARY SEG of the reading's label map (one segment per structure present), or None without one."""
    lm = reading.label_map
    if lm is None:
        return None
    present = [(v, n) for v, n in vocabulary.STRUCTURES.items() if (lm == v).any()]
    if not present:
        return None
    ai = reading.models.get("segmentation")
    descriptions = []
    for number, (_, name) in enumerate(present, start=1):
        value, meaning = vocabulary.STRUCTURE_CODES[name]
        kw = dict(
            segment_number=number, segment_label=name,
            segmented_property_category=codes.SCT.AnatomicalStructure,
            segmented_property_type=code("SCT", value, meaning),
        )  # fmt: skip
        if ai:
            kw |= dict(
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                algorithm_identification=hd.AlgorithmIdentificationSequence(
                    name=ai["id"], version=ai["version"], family=codes.DCM.ArtificialIntelligence,
                    # AlgorithmSource is an LO (64 characters): the sha256 goes into AlgorithmParameters (LT).
                    source=MANUFACTURER, parameters={"weights_sha256": ai["weights_sha256"]},
                ),
            )  # fmt: skip
        else:
            kw["algorithm_type"] = hd.seg.SegmentAlgorithmTypeValues.MANUAL
        descriptions.append(hd.seg.SegmentDescription(**kw))
    masks = np.stack([lm == v for v, _ in present], axis=-1)[None]
    source = with_type2(source)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        seg = hd.seg.Segmentation(
            source_images=[source], pixel_array=masks, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=descriptions, series_instance_uid=hd.UID(), series_number=901,
            sop_instance_uid=hd.UID(), instance_number=1, manufacturer=MANUFACTURER,
            manufacturer_model_name=MODEL_NAME, software_versions=SOFTWARE_VERSION, device_serial_number="none",
            content_description=f"{'AI' if ai else 'Reader'} outlines; {RESEARCH_USE}"[:64],
            content_creator_name=None if ai else _person(reading.observer), omit_empty_frames=False,
        )  # fmt: skip
    seg.SeriesDescription = (
        f"CXR Review SEG ({'AI ' + ai['id'] + ' ' + ai['version'] if ai else reading.observer})"[:64]
    )
    if "PatientOrientation" not in seg:
        seg.PatientOrientation = source.get("PatientOrientation", "")
    shared = seg.SharedFunctionalGroupsSequence[0]
    measures = shared.get("PixelMeasuresSequence")
    if measures and "FrameOfReferenceUID" not in source and "SliceThickness" not in measures[0]:
        # A projection radiograph has no slice thickness; highdicom 0.28 writes pixel measures without it for such
        # sources and then cannot read them back (segread). The spacing stays in the referenced source image.
        del shared.PixelMeasuresSequence
    return _clean(seg)


def structured_report(source: Dataset, reading: Reading) -> Dataset:
    """TID 1500 Comprehensive 3D SR: one qualitative evaluation per labelled finding (present / absent;
    uncertain findings are left out: TID 1500 has no such value) and one planar ROI per box, its score as a
    probability for AI boxes. The observer is the reader, or the model as a device with its id, version and
    weights sha256 as AlgorithmIdentification."""
    ai = reading.models.get("classification")
    if ai:
        observer = hd.sr.ObserverContext(
            observer_type=codes.DCM.Device,
            observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
                uid=hd.UID(), name=ai["id"], manufacturer_name=MANUFACTURER, model_name=f"{ai['id']} {ai['version']}",
                serial_number=ai["weights_sha256"][:64],
            ),
        )  # fmt: skip
        algorithm = hd.sr.AlgorithmIdentification(
            name=ai["id"], version=ai["version"], parameters=[f"weights_sha256={ai['weights_sha256']}"]
        )
    else:
        observer = hd.sr.ObserverContext(
            observer_type=codes.DCM.Person,
            observer_identifying_attributes=hd.sr.PersonObserverIdentifyingAttributes(
                name=_person(reading.observer)
            ),
        )
        algorithm = None
    values = {"present": codes.SCT.Present, "absent": codes.SCT.Absent}
    evaluations = [
        hd.sr.QualitativeEvaluation(name=finding_code(label), value=values[v])
        for label, v in reading.labels.items()
        if v in values
    ]
    groups = (
        [
            hd.sr.MeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier="Image-level findings"),
                finding_type=codes.SCT.Finding,
                qualitative_evaluations=evaluations,
                algorithm_id=algorithm,
                source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(source)],
            )  # fmt: skip
        ]
        if evaluations
        else []
    )
    for n, box in enumerate(reading.boxes, start=1):
        x0, y0, x1, y1 = box["x"], box["y"], box["x"] + box["w"], box["y"] + box["h"]
        region = hd.sr.ImageRegion(
            graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
            graphic_data=np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]], dtype=float),
            source_image=hd.sr.SourceImageForRegion.from_source_image(source),
        )
        measurements = None
        if box.get("score") is not None:
            measurements = [
                hd.sr.Measurement(
                    name=codes.DCM.Probability,
                    value=float(box["score"]),
                    unit=codes.UCUM.NoUnits,
                    algorithm_id=algorithm,
                )
            ]
        groups.append(
            hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(
                    uid=hd.UID(), identifier=f"{box['label']} box {n}"
                ),
                referenced_region=region,
                finding_type=finding_code(box["label"]),
                algorithm_id=algorithm,
                measurements=measurements,
            )  # fmt: skip
        )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_person_context=None if ai else observer,
                                                     observer_device_context=observer if ai else None),
        procedure_reported=code("SCT", "399208008", "Plain chest X-ray"),
        imaging_measurements=groups or None,
        title=codes.DCM.ImagingMeasurementReport,
    )  # fmt: skip
    source = with_type2(source)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        sr = hd.sr.Comprehensive3DSR(
            evidence=[source], content=report, series_instance_uid=hd.UID(), series_number=902,
            sop_instance_uid=hd.UID(), instance_number=1, manufacturer=MANUFACTURER, is_complete=True,
        )  # fmt: skip
    sr.SeriesDescription = (
        f"CXR Review SR ({'AI ' + ai['id'] + ' ' + ai['version'] if ai else reading.observer})"[:64]
    )
    return _clean(sr)


def _person(name: str) -> str:
    return f"{name}^"  # a single-component person name, marked as such
