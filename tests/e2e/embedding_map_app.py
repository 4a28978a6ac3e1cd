"""A tiny app for tests/e2e/test_embedding_map.py: the failure-case explorer's embedding-map tab on the evaluation
set, version, finding and threshold the test names (EMAP_SET, EMAP_REF, EMAP_FINDING, EMAP_THRESHOLD), and the
item ids it returns."""

import json
import os

import streamlit as st

from screens import _deps
from screens._embedding_map import render

st.set_page_config(layout="wide")
selected = render(_deps.ctx(), set_id=int(os.environ["EMAP_SET"]), ref=os.environ["EMAP_REF"],
                  finding=os.environ["EMAP_FINDING"], threshold=float(os.environ["EMAP_THRESHOLD"]), key="emap")  # fmt: skip
st.code(json.dumps(selected), language="json")
