"""Findings from radiology report text: a negation- and uncertainty-aware labeller (`reports.labeller`), its
CSV input and output (`reports.table`) and its scoring against hand-assigned MeSH terms (`reports.evaluate`).
Pure Python; the terms, cues, sections and the MeSH map are data files under `reports/data`."""
