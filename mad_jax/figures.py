"""Figures for reports, made without pyplot: no global matplotlib backend is chosen, so a notebook
that imports mad_jax keeps its inline plots, and a headless machine needs no display. `save`
writes one to a local path or a bucket URL."""
from __future__ import annotations

import io

from mad_jax import storage


def subplots(*args, figsize=None, **kwargs):
    """(figure, axes) like `pyplot.subplots`, on a standalone `matplotlib.figure.Figure`.

    Save with `save(fig, path)`; nothing needs closing (pyplot never tracks it).
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    return fig, fig.subplots(*args, **kwargs)


def colormap(name: str):
    """A registered matplotlib colormap by name, e.g. "viridis"."""
    import matplotlib

    return matplotlib.colormaps[name]


def save(fig, path: str, **savefig_kwargs) -> None:
    """Renders `fig` in the format its file name says (".png") and writes it atomically to
    `path`, a local path or a URL (`mad_jax.storage`); `savefig_kwargs` go to `fig.savefig`."""
    buf = io.BytesIO()
    fig.savefig(buf, format=str(path).rsplit(".", 1)[-1], **savefig_kwargs)
    storage.write_bytes(path, buf.getvalue())
