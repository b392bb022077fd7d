"""Evaluation pictures a user can read: titles inside the figure, one legend entry per visible line,
the baseline labelled as the base model (issue #23 item 2)."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt

from ctxext_trainer.eval.plots import heatmap_figure, loss_figure

GRID = {128: {0.0: 1.0, 0.5: 1.0, 1.0: 1.0}, 512: {0.0: 1.0, 0.5: 0.0, 1.0: 0.0}, 1024: {0.0: 0.0, 0.5: 0.0, 1.0: 0.0}}


def _inside(fig, artist) -> bool:
    fig.canvas.draw()
    box, page = artist.get_window_extent(), fig.bbox
    return box.x0 >= page.x0 - 0.5 and box.x1 <= page.x1 + 0.5 and box.y0 >= page.y0 - 0.5 and box.y1 <= page.y1 + 0.5


def test_a_long_heatmap_title_stays_inside_the_figure() -> None:
    title = "tiny-cpu-with-a-long-name stage 2/2 (seqLen 1024): passkey accuracy"
    fig = heatmap_figure(GRID, title=title)
    ax = fig.axes[0]
    assert _inside(fig, ax.title), "the title is clipped"
    assert " ".join(ax.get_title().split()) == title  # wrapped, not cut
    plt.close(fig)


def _buckets(length: int, shift: float = 0.0) -> list[dict[str, float]]:
    return [{"from": a, "to": a + 128, "loss": 2.0 + (a % 384) / 512 + shift} for a in range(0, length, 128)]


def test_lengths_whose_loss_is_a_prefix_of_the_longest_are_not_drawn_on_top_of_it() -> None:
    """Causal loss at a position depends only on earlier tokens: with the same packed text, each shorter
    length's curve is the longest one's prefix and would hide under it (three legend entries, one line)."""
    longest = _buckets(1024)
    same = {128: longest[:1], 512: longest[:4], 1024: longest}
    fig = loss_figure(same, {128: 6.5, 512: 6.0, 1024: 5.5}, original_length=128, title="t")
    left = fig.axes[0]
    labels = [t.get_text() for t in left.get_legend().get_texts()]
    assert len([x for x in labels if not x.startswith("L0")]) == 1, labels
    assert len(left.get_lines()) == 2  # the longest length and the L0 marker
    plt.close(fig)
    differ = {128: _buckets(128, 0.5), 512: _buckets(512, 0.25), 1024: longest}
    fig = loss_figure(differ, {128: 6.5, 512: 6.0, 1024: 5.5}, original_length=128, title="t")
    assert len(fig.axes[0].get_lines()) == 4
    assert _inside(fig, fig._suptitle)
    plt.close(fig)


def test_the_baseline_plots_say_base_model(tmp_path: Path) -> None:
    from ctxext.stage_config import StageConfig
    from ctxext_trainer.tiny.evaluate import plot_title

    config = StageConfig(job="tiny-cpu", job_name="tiny-cpu", stage=1, total_stages=2, model_path="/m",
                         output_dir=str(tmp_path), seq_len=512, rope_theta=1e4, original_context_length=128,
                         steps=1, learning_rate=1e-3, batch_size=1)
    title = plot_title(config)
    assert "stage" not in title and "seqLen 512" not in title
    assert title == "tiny-cpu base model (θ 10,000)"
