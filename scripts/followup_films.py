"""Print the frontal X-ray films (PA, AP, AP Supine) of every patient with two or more of them, one path a line,
from a metadata CSV in the ieee8023 COVID-19 collection's columns (patientid, view, modality, file) and the
folder of its images: the prior/current pairs start.sh imports. Laterals and CT slices are left out.

    python scripts/followup_films.py METADATA_CSV IMAGES_DIR
"""

import csv
import sys
from collections import defaultdict
from pathlib import Path

FRONTAL = {"PA", "AP", "AP SUPINE"}


def films(metadata: Path, images: Path) -> list[Path]:
    by_patient = defaultdict(list)
    with open(metadata, newline="", encoding="utf-8-sig") as fh:
        for row in csv.DictReader(fh):
            if row["view"].strip().upper() in FRONTAL and row["modality"].strip() == "X-ray":
                by_patient[row["patientid"]].append(images / row["file"])
    return [f for fs in by_patient.values() if len(fs) >= 2 for f in fs]


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    print("\n".join(map(str, films(Path(sys.argv[1]), Path(sys.argv[2])))))
