"""What every lab's interactive figures share: the :class:`Explorer` base and device memory.

An explorer is a small class: ``.controls`` (ipywidgets), ``.figure`` (a
``go.FigureWidget``, redrawn in place by :func:`swap_figure`), ``.readout`` (an HTML
line of numbers) and ``.update()``, which recomputes everything from the controls'
current values. A cell that ends with an explorer displays it. Tests drive explorers by
setting control values. Each lab's explorers live in its module,
``infer_lab.lessons.labNN_*``.
"""

from __future__ import annotations

import os

import ipywidgets as W
import plotly.graph_objects as go
import torch

GB = 1e9


def machine_memory_bytes() -> int | None:
    """This machine's memory: the GPU's when CUDA is present, else physical RAM."""
    if torch.cuda.is_available():
        return torch.cuda.get_device_properties(0).total_memory
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def device_memory_options() -> dict[str, float]:
    """{label: bytes}: this machine's memory (measured), then spec-sheet presets."""
    from ..hardware import PRESETS as HW

    out: dict[str, float] = {}
    mine = machine_memory_bytes()
    if mine:
        kind = "GPU" if torch.cuda.is_available() else "RAM"
        out[f"this machine ({kind})"] = float(mine)
    for name, hw in HW.items():
        if hw.memory_gb:
            out[f"{name} (spec)"] = hw.memory_gb * GB
    return out


def swap_figure(fw: go.FigureWidget, fig: go.Figure) -> None:
    """Redraw a FigureWidget from a freshly built figure, in one update."""
    with fw.batch_update():
        fw.data = []
        fw.add_traces(fig.data)
        fw.layout = fig.layout


class Explorer:
    """Controls, a readout and a figure that follow each other (see the module docstring).

    A subclass builds ``controls``, ``readout`` and ``figure`` in ``__init__``, calls
    :meth:`wire` on the controls that should redraw, and implements :meth:`update`.
    """

    controls: W.Widget
    figure: go.FigureWidget
    readout: W.HTML

    def update(self) -> None:
        """Recompute the readout and redraw the figure from the controls' values."""
        raise NotImplementedError

    def wire(self, *controls: W.Widget) -> None:
        """Call :meth:`update` whenever one of ``controls`` changes value."""
        for c in controls:
            c.observe(lambda _change: self.update(), names="value")

    @property
    def widget(self) -> W.Widget:
        return W.VBox([self.controls, self.readout, self.figure])

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)
