"""The parts every dock shares: how jobs hand events to the viewer and how the
run panel draws them (both shape how responsive the viewer stays)."""

import threading
import time

import pytest

from napari_dlvision.core.events import Progress
from napari_dlvision.widgets.jobs import JobRunner
from napari_dlvision.widgets.parts import PreviewHistory, RunPanel


def test_worker_waits_until_an_event_with_a_payload_is_shown(qtbot):
    """The main thread handles a preview while the worker waits (no race for the
    GIL and the cores while layers are made); plain steps do not wait."""
    seen = []
    log = []

    def gen():
        for i in range(3):
            yield Progress("training", i, 3)
            log.append(("after step", i, list(seen)))
        yield Progress("training", 3, 3, payload={"preview": i})
        log.append(("after preview", 3, list(seen)))

    def on_event(ev, job):
        if ev.payload:
            time.sleep(0.2)  # a slow layer update
        seen.append(ev.done)

    runner = JobRunner(on_error=lambda m, j: seen.append(m))
    runner.start(gen(), on_event)
    qtbot.waitUntil(lambda: not runner.busy, timeout=10_000)
    assert seen == [0, 1, 2, 3]
    after_preview = [entry for entry in log if entry[0] == "after preview"][0]
    assert 3 in after_preview[2], "the worker went on before the preview was shown"


def test_a_handler_that_never_answers_does_not_hang_the_worker(qtbot, monkeypatch):
    import napari_dlvision.widgets.jobs as jobs

    monkeypatch.setattr(jobs, "SHOW_WAIT_S", 0.05)
    done = threading.Event()

    def gen():
        yield Progress("training", 1, 2, payload={"preview": 1})
        done.set()  # reached although the main thread is still busy with the preview
        yield Progress("done", 2, 2)

    def on_event(ev, job):
        if ev.payload:
            assert done.wait(5)

    runner = JobRunner(on_error=lambda m, j: None)
    runner.start(gen(), on_event)
    qtbot.waitUntil(lambda: not runner.busy, timeout=10_000)
    assert done.is_set()


def test_routine_steps_are_drawn_a_few_times_a_second_and_the_last_lands(qtbot):
    panel = RunPanel([("Train", lambda: None)], lambda: None, plot=True)
    qtbot.addWidget(panel)
    n = 200
    for i in range(1, n + 1):
        panel.show_progress(Progress("training", i, n, loss=1.0 / i), status=f"Step {i}/{n}")
    # Every point is in the curve at once; the status and bar wait for the timer.
    assert len(panel.plot.loss) == n
    assert panel.status.text() == "Step 1/200"
    qtbot.waitUntil(lambda: panel.status.text() == f"Step {n}/{n}", timeout=2000)
    assert panel.progress.value() == 100
    # A message (not a routine step) is drawn at once.
    panel.show_progress(Progress("predicting", 0, 1, message="Predicting…"))
    assert panel.status.text() == "Predicting…"
    # What the widget says is not overwritten by a step still waiting to be drawn.
    panel.show_progress(Progress("training", 5, 10, loss=0.5), status="Step 5/10")
    panel.say("Training stopped after 5 steps.")
    qtbot.wait(int(1000 * RunPanel.DRAW_EVERY_S) + 100)
    assert panel.status.text() == "Training stopped after 5 steps."
    assert panel.progress.value() == 50


def test_the_preview_history_stays_bounded_keeps_the_first_and_newest_and_goes_back(qtbot):
    import torch

    chosen = []
    history = PreviewHistory(lambda step, weights: chosen.append((step, weights)))
    qtbot.addWidget(history)
    assert not history.use_btn.isEnabled()
    small = {"w": torch.zeros(10)}
    for step in range(10, 310, 10):  # 30 previews of a small network
        history.add(step, small)
    steps = [s for s, _ in history.entries]
    assert len(steps) <= PreviewHistory.MAX and steps[0] == 10 and steps[-1] == 300
    assert steps == sorted(steps) and history.combo.count() == len(steps)
    history.clear()
    big = {"w": torch.empty(20 << 20, dtype=torch.uint8)}  # 20 MB a snapshot: bounded by bytes
    for step in range(1, 31):
        history.add(step, big)
    assert 2 <= len(history.entries) <= PreviewHistory.MAX_BYTES // (20 << 20)
    assert history.entries[-1][0] == 30
    history.set_busy(True)
    assert not history.use_btn.isEnabled() and not history.combo.isEnabled()
    history.set_busy(False)
    history.choose(history.entries[0][0])
    history.use_btn.click()
    assert chosen == [history.entries[0]]


def test_a_job_failing_with_a_runtime_error_ends_and_is_reported(qtbot):
    # superqt's workers end silently on a RuntimeError (torch's usual error type):
    # the widget stayed busy for good, and Stop could not free it.
    def gen():
        yield Progress("training", 1, 2)
        raise RuntimeError("Given input size: (64x1x1). Calculated output size: (64x0x0)")

    errors, ended = [], []
    runner = JobRunner(on_error=lambda m, j: errors.append(m))
    runner.start(gen(), lambda ev, job: None, on_end=lambda job: ended.append(job.error))
    qtbot.waitUntil(lambda: not runner.busy, timeout=10_000)
    assert errors == ["RuntimeError: Given input size: (64x1x1). Calculated output size: (64x0x0)"]
    assert ended == errors


@pytest.mark.parametrize("name", ["pixel_classifier.PixelClassifierWidget", "unet_trainer.UNetWidget",
                                  "classifier.ClassifierWidget", "detector.DetectorWidget", "denoiser.DenoiserWidget"])
def test_every_dock_fits_a_1000_pixel_screen_by_scrolling(make_napari_viewer, name):
    import importlib

    module, cls = name.split(".")
    viewer = make_napari_viewer(show=True)
    w = getattr(importlib.import_module(f"napari_dlvision.widgets.{module}"), cls)(viewer)
    viewer.window.add_dock_widget(w)
    content = w._scroll.widget()
    # The dock asks for little height (it scrolls; never less than its first rows, so a dock added
    # under it leaves them visible) and for its content's full width (no sideways scrolling).
    assert min(300, content.minimumSizeHint().height()) <= w.minimumSizeHint().height() < 400
    assert w.minimumSizeHint().width() >= content.minimumSizeHint().width()
    viewer.window._qt_window.resize(1400, 900)
    assert viewer.window._qt_window.height() <= 1000
