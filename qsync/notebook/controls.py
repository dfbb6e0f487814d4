"""The launcher's buttons (Start, Pause, Resume, Cancel job…), the confirmation Cancel asks for, and the panel
offered when the form differs from the unfinished job: which of them a job's state enables."""

from __future__ import annotations

import ipywidgets as widgets

from qsync.notebook.formatting import page_style


class LauncherControls:
    def __init__(self) -> None:
        self.start_button = widgets.Button(description="Start", button_style="primary", icon="play",
                                           tooltip="plan the job (or pick up the unfinished one) and run it")  # fmt: skip
        self.pause_button = widgets.Button(description="Pause", icon="pause", disabled=True,
                                           tooltip="stop after the API calls in flight; Resume continues")  # fmt: skip
        self.resume_button = widgets.Button(description="Resume", icon="step-forward", disabled=True,
                                            tooltip="continue the paused or failed job")  # fmt: skip
        self.cancel_button = widgets.Button(description="Cancel job…", button_style="danger", icon="times",
                                            disabled=True, tooltip="end the job for good (asks first)")  # fmt: skip
        for button, css in ((self.start_button, "qsync-start"), (self.pause_button, "qsync-pause"),
                            (self.resume_button, "qsync-resume"), (self.cancel_button, "qsync-cancel")):  # fmt: skip
            button.add_class(css)
        self.confirm_yes = widgets.Button(description="Yes, cancel the job", button_style="danger",
                                          layout={"width": "180px"})  # fmt: skip
        self.confirm_yes.add_class("qsync-confirm-cancel")
        self.confirm_no = widgets.Button(description="No, keep it", layout={"width": "120px"})
        self.confirm_text = widgets.HTML("")
        self.confirm = widgets.VBox([self.confirm_text, widgets.HBox([self.confirm_yes, self.confirm_no])],
                                    layout={"display": "none"})  # fmt: skip
        self.confirm.add_class("qsync-confirm")
        self.as_stored_button = widgets.Button(description="Resume as stored", icon="step-forward",
                                               layout={"width": "170px"})  # fmt: skip
        self.as_stored_button.add_class("qsync-resume-as-stored")
        self.afresh_button = widgets.Button(description="Cancel it and start afresh", button_style="warning",
                                            layout={"width": "220px"})  # fmt: skip
        self.afresh_button.add_class("qsync-start-afresh")
        self.mismatch_text = widgets.HTML("")
        self.mismatch = widgets.VBox([self.mismatch_text, widgets.HBox([self.as_stored_button, self.afresh_button])],
                                     layout={"display": "none"})  # fmt: skip
        self.mismatch.add_class("qsync-mismatch")
        self.style = page_style()

    def _buttons(self, *, running: bool, resumable: bool = False) -> None:
        with self.start_button.hold_trait_notifications():
            self.start_button.disabled = running
            self.pause_button.disabled = not running
            self.resume_button.disabled = running or not resumable
            self.cancel_button.disabled = not (running or resumable)

    @staticmethod
    def _hide(box: widgets.Widget) -> None:
        box.layout.display = "none"
