"""Table cells for st.dataframe."""


def text(value) -> str:
    """A cell as text, empty when the value is missing: Streamlit draws a missing value as the word "None". Text
    for every cell of a column, so that no column mixes numbers or dates with empty strings."""
    return "" if value is None else str(value)
