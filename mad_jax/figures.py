"""Figures for reports, made without pyplot: no global matplotlib backend is chosen, so a notebook
that imports mad_jax keeps its inline plots, and a headless machine needs no display."""
from __future__ import annotations


def subplots(*args, figsize=None, **kwargs):
    """(figure, axes) like `pyplot.subplots`, on a standalone `matplotlib.figure.Figure`.

    Save with `fig.savefig(path_or_buffer)`; nothing needs closing (pyplot never tracks it).
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    return fig, fig.subplots(*args, **kwargs)


def colormap(name: str):
    """A registered matplotlib colormap by name, e.g. "viridis"."""
    import matplotlib

    return matplotlib.colormaps[name]
