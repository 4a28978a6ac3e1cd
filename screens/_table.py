"""Table cells for st.dataframe."""


def text(value) -> str:
    """A cell as text, empty when the value is missing: Streamlit draws a missing value as the word "None". Text
    for every cell of a column, so that no column mixes numbers or dates with empty strings."""
    return "" if value is None else str(value)


def plain(value) -> str:
    """Text shown through Markdown (titles, messages) as written: a file name such as `![x](http://…)` must not
    become an image the browser fetches."""
    return "".join("\\" + c if c in "\\`*_{}[]()#+-.!<>|~$" else c for c in str(value))
