"""What can be labelled: the 14 NIH ChestX-ray14 findings and "No Finding", the anatomy structures of a label
map, and their codes for DICOM SEG / SR. Codes are SNOMED CT: from DICOM PS3.16 where pydicom's dictionary
has the concept (marked "PS3.16"), else the SNOMED CT International concept id; "99CXR" codes are this
project's own, declared in each object that uses them, where SNOMED has no concept matching the NIH label."""

from __future__ import annotations

FINDINGS = (
    "Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia", "Pneumothorax",
    "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia",
)  # fmt: skip
NO_FINDING = "No Finding"
LABEL_VALUES = ("present", "absent", "uncertain")

# Label map values (0 is background) and the names used in schemas, exports and agreement.
STRUCTURES = {1: "lungs", 2: "heart", 3: "clavicles"}

LOCAL_SCHEME = "99CXR"
# finding: (scheme, code value, code meaning)
FINDING_CODES = {
    "Atelectasis": ("SCT", "46621007", "Atelectasis"),
    "Cardiomegaly": ("SCT", "287272002", "Cardiomegaly"),  # PS3.16
    "Effusion": ("SCT", "60046008", "Pleural effusion"),  # PS3.16
    "Infiltration": ("SCT", "409609008", "Radiologic infiltrate of lung"),
    "Mass": ("SCT", "4147007", "Mass"),  # PS3.16
    "Nodule": ("SCT", "27925004", "Nodule"),  # PS3.16
    "Pneumonia": ("SCT", "233604007", "Pneumonia"),
    "Pneumothorax": ("SCT", "36118008", "Pneumothorax"),  # PS3.16
    "Consolidation": ("SCT", "95436008", "Lung consolidation"),
    "Edema": ("SCT", "19242006", "Pulmonary edema"),  # PS3.16
    "Emphysema": ("SCT", "87433001", "Pulmonary emphysema"),
    "Fibrosis": ("SCT", "51615001", "Fibrosis of lung"),
    "Pleural_Thickening": (LOCAL_SCHEME, "PLEURTHICK", "Pleural thickening"),  # <= 16 characters (SH)
    "Hernia": ("SCT", "84089009", "Hiatal hernia"),  # what NIH's "Hernia" labels on chest films
    NO_FINDING: (LOCAL_SCHEME, "NOFINDING", "None of the 14 NIH findings"),
}
# structure name: (code value, code meaning), SNOMED CT, all PS3.16
STRUCTURE_CODES = {
    "lungs": ("39607008", "Lung"),
    "heart": ("80891009", "Heart"),
    "clavicles": ("51299004", "Clavicle"),
}


def check_finding(name: str) -> str:
    """The finding's canonical name; ValueError naming the known ones otherwise."""
    if name in FINDING_CODES:
        return name
    raise ValueError(f"unknown finding {name!r} (known: {', '.join([*FINDINGS, NO_FINDING])})")
