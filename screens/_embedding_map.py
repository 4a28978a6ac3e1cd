"""The embedding-map tab of the failure-case explorer: an evaluation set's images on a 2-D map (UMAP or t-SNE of
the classifier's penultimate-layer features), coloured by error type for one finding at an operating point. A
box, a lasso or a k-means cluster of the map selects a group; its metrics show beside the whole set's, and
`render` returns the group's item ids (for "send to annotators"). The work is done by services/embedding_map.py."""

from __future__ import annotations

import streamlit as st

from db import engine as dbe
from inference.types import RESEARCH_USE, ModelUnavailable
from screens import _deps, _signin, _table
from services import embedding_map, eval_runs
from services.context import Context

SELECT_BY = {"map": "Box or lasso on the map", "cluster": "A cluster"}
# LookupError: an unknown set or version (KeyError is one)
ERRORS = (ModelUnavailable, ValueError, LookupError, dbe.DatabaseBusy, dbe.DatabaseUnavailable)


def _fmt(value) -> str:
    return "–" if value is None else f"{value:.3f}" if isinstance(value, float) else _table.text(value)


def _build(ctx: Context, set_id: int, ref: str, method: str, refresh: bool) -> embedding_map.MapData:
    """The map, with a progress bar while features and the map are computed (none when the cache has it)."""
    bar = None

    def progress(text: str, fraction: float) -> None:
        nonlocal bar
        bar = bar or st.progress(0.0, text=text)
        bar.progress(min(fraction, 1.0), text=text)

    data = embedding_map.build_map(ctx, _deps.runner(), set_id, ref, method, progress=progress, refresh=refresh)
    if bar is not None:
        bar.empty()
    return data


def render(ctx: Context, *, set_id: int, ref: str, finding: str, threshold: float, key: str,
           item_ids: list[int] | None = None) -> list[int]:  # fmt: skip
    """Draw the tab for version `ref` on set `set_id` (only `item_ids` where given, e.g. a subgroup); return the
    selected items' ids ([] when nothing is selected)."""
    c1, c2, c3 = st.columns([1.2, 1.6, 1])
    method = c1.radio("Map", list(embedding_map.METHODS), format_func=embedding_map.METHODS.get, horizontal=True,
                      key=f"{key}_method")  # fmt: skip
    select_by = c2.radio("Select", list(SELECT_BY), format_func=SELECT_BY.get, horizontal=True, key=f"{key}_by")
    k = c3.number_input("Clusters (k-means on the map)", 2, embedding_map.MAX_CLUSTERS, 6, key=f"{key}_k",
                        disabled=select_by != "cluster")  # fmt: skip
    refresh = st.session_state.pop(f"{key}_refresh", False)
    try:
        data = _build(ctx, set_id, ref, method, refresh)
        col = embedding_map.colour(ctx, _deps.registry(), data, finding, threshold, item_ids)
    except ERRORS as exc:
        st.error(f"No map: {_signin.sentence(exc)}")
        return []
    m = data.model
    made = "from the cache" if data.map_cached else f"computed now ({data.computed} images embedded)"
    st.caption(f":orange[{RESEARCH_USE}] · model {m.model_id} version {m.version} weights sha256 "
               f"{m.weights_sha256} · {data.layer} layer · {embedding_map.METHODS[method]} seed {data.seed}, "
               f"map {made}")  # fmt: skip
    if data.missing:
        st.warning(f"{len(data.missing)} image(s) could not be read and are not on the map.")
        with st.expander("Images not on the map"):
            st.dataframe([{k: _table.text(v) for k, v in r.items()} for r in data.missing], hide_index=True)
        if st.button("Map again", key=f"{key}_again", help="After the images are back (cached features are reused)"):
            st.session_state[f"{key}_refresh"] = True
            st.rerun()
    if not col.items:
        st.info("No image of this set is on the map.")
        return []
    if not col.has.any():
        st.info(f"No stored result of {ref} on this set yet: run it on the Evaluation page to colour the map.")

    cluster_of, selected = None, []
    if select_by == "cluster":  # the cluster is picked before the map is drawn, so the map can highlight it
        cluster_of = embedding_map.clusters(col.data.xy, int(k), data.seed)
        sizes = {c: int((cluster_of == c).sum()) for c in sorted(set(cluster_of.tolist()))}
        chosen = st.selectbox("Cluster", list(sizes), format_func=lambda c: f"C{c + 1} ({sizes[c]} images)",
                              key=f"{key}_cluster")  # fmt: skip
        selected = [col.items[i].id for i in range(len(col.items)) if cluster_of[i] == chosen]
    event = st.plotly_chart(embedding_map.figure(col, cluster_of, selected if cluster_of is not None else None),
                            key=f"{key}_chart_{set_id}_{ref}_{method}", on_select="rerun",
                            selection_mode=("lasso", "box", "points"), config={"displaylogo": False})  # fmt: skip
    if cluster_of is None:
        points = (event.selection.points if event else None) or []
        shown = {it.id for it in col.items}  # a selection kept from before a narrower item_ids counts what is shown
        selected = [i for i in dict.fromkeys(int(p["customdata"][0]) for p in points if p.get("customdata"))
                    if i in shown]  # fmt: skip
        if not selected:
            st.caption("Drag a box on the map to select a group (the toolbar switches to lasso); "
                       "double-click clears it.")  # fmt: skip

    whole = col.metrics()
    rows = embedding_map.metric_rows(whole, col.metrics(selected) if selected else None)
    if item_ids is not None:
        rows[-1]["group"] = "all shown"
    st.markdown(f"**{finding}** at threshold **{threshold:.4g}** (score ≥ threshold is called positive)")
    st.table([{k: _fmt(v) for k, v in r.items()} for r in rows])
    if selected:
        by_id = {it.id: i for i, it in enumerate(col.items)}
        with st.expander(f"The {len(selected)} selected image(s)"):
            st.dataframe([{"image": _table.text(eval_runs.item_name(col.items[by_id[i]])),
                           "error type": col.types[by_id[i]],
                           "score": None if not col.has[by_id[i]] else round(float(col.scores[by_id[i]]), 4)}
                          for i in selected if i in by_id], hide_index=True)  # fmt: skip
    return selected
