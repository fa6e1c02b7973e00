"""What every lab figure must show: a title, and a unit in each axis title."""


def assert_titled(fig, categorical_x=False):
    axes = [fig.layout.yaxis] if categorical_x else [fig.layout.xaxis, fig.layout.yaxis]
    for axis in axes:
        assert axis.title.text and "(" in axis.title.text, axis.title.text  # a unit
    assert fig.layout.title.text
