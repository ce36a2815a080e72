"""The comparison dot plot: each value drawn where it belongs, floors as lines, nothing invented."""

from __future__ import annotations

import numpy as np

from hybridssl.report.scores import probe_scores, scores_figure, scores_png


def dots(fig) -> dict[tuple[str, float], float]:
    """(colour, y) -> x of every drawn dot."""
    ax = fig.axes[0]
    found = {}
    for line in ax.lines:
        x, y = line.get_xdata(), line.get_ydata()
        if line.get_marker() == "o" and len(x) == 1:
            found[(line.get_color(), round(float(y[0]), 2))] = float(x[0])
    return found


def test_every_measured_value_is_a_dot_on_its_encoders_row_and_floors_are_lines():
    encoders = [("mae", {"k-NN": 80.3, "linear": 82.5}), ("simclr", {"k-NN": 86.0, "linear": None})]
    floors = [("random init", {"k-NN": 68.4, "linear": 79.6}), ("raw pixels", {"k-NN": 85.7, "linear": 84.3})]
    fig = scores_figure(encoders, floors)
    ax = fig.axes[0]
    drawn = dots(fig)
    assert sorted(drawn.values()) == [80.3, 82.5, 86.0], "one dot per measured value, none for the unmeasured"
    rows = {x: y for (c, y), x in drawn.items()}
    assert round(rows[80.3]) == 0 and round(rows[82.5]) == 0 and round(rows[86.0]) == 1, "each encoder on its own row"
    colour = {x: c for (c, y), x in drawn.items()}
    assert colour[80.3] == colour[86.0] != colour[82.5], "one colour per protocol"
    vertical = [line for line in ax.lines if len(line.get_xdata()) == 2 and np.ptp(line.get_xdata()) == 0]
    floor_x = sorted(float(line.get_xdata()[0]) for line in vertical)
    assert floor_x == [68.4, 79.6, 84.3, 85.7]
    raw_knn = next(line for line in vertical if float(line.get_xdata()[0]) == 85.7)
    assert raw_knn.get_color() == colour[80.3] and raw_knn.get_linestyle() != next(
        line for line in vertical if float(line.get_xdata()[0]) == 68.4).get_linestyle(), "floors told apart by style"
    low, high = ax.get_xlim()
    assert low < 68.4 and high > 86.0 and low > 50, "the axis spans the values, not 0-100"
    assert [t.get_text() for t in ax.get_yticklabels()] == ["mae", "simclr"]


def test_nothing_measured_draws_nothing_and_a_figure_is_a_png():
    assert scores_png([]) is None and scores_png([("mae", {"k-NN": None})]) is None
    assert scores_png([("mae", {"k-NN": 80.0})], [("raw pixels", {"k-NN": 85.0})]).startswith(b"\x89PNG")


def test_probe_scores_take_the_k_nearest_20_and_the_latest_row():
    def knn(k, value):
        return {"protocol": "knn", "settings": {"k": k}, "value": value}

    rows = [knn(10, 70.0), knn(200, 60.0), knn(20, 71.0), {"protocol": "linear", "value": 80.0},
            knn(20, 72.0), {"protocol": "linear", "value": 81.0}, {"protocol": "clustering", "value": 50.0}]  # fmt: skip
    assert probe_scores(rows) == {"k-NN (k=20)": 72.0, "linear": 81.0}
    assert probe_scores([knn(10, 70.0), knn(200, 60.0)]) == {"k-NN (k=10)": 70.0, "linear": None}
    assert probe_scores([{"protocol": "knn", "value": 5.0}]) == {"k-NN": 5.0, "linear": None}, "a row without k"
    assert probe_scores([]) == {"k-NN": None, "linear": None}
