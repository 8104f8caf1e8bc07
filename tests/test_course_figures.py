"""minibn.course.save_figure: a lesson's figure lands in figures/ next to the notebook."""
import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from minibn.course import save_figure  # noqa: E402


@pytest.fixture
def fig():
    fig, ax = plt.subplots(figsize=(2, 2))
    ax.plot([0, 1], [1, 0])
    yield fig
    plt.close(fig)


def test_saves_png_under_figures_relative_to_the_working_directory(tmp_path, monkeypatch, fig):
    monkeypatch.chdir(tmp_path)
    path = save_figure(fig, "loss-curves")
    assert path == tmp_path.joinpath("figures", "loss-curves.png").relative_to(tmp_path)
    assert (tmp_path / path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_keeps_a_vector_format_when_asked(tmp_path, fig):
    path = save_figure(fig, "figure1.svg", directory=tmp_path)
    assert path.suffix == ".svg" and b"<svg" in path.read_bytes()[:400]


@pytest.mark.parametrize("name, error", [("../outside.png", ValueError), ("sub/dir.png", ValueError),
                                         ("", ValueError), ("plot.jpeg", ValueError)])
def test_rejects_names_that_are_not_plain_supported_file_names(tmp_path, fig, name, error):
    with pytest.raises(error, match="save_figure"):
        save_figure(fig, name, directory=tmp_path)


def test_rejects_something_that_is_not_a_figure(tmp_path):
    with pytest.raises(TypeError, match="matplotlib Figure"):
        save_figure([1, 2, 3], "x", directory=tmp_path)
