"""Step events of the flows running in this process, for the CLI's progress display: Prefect
task state hooks call these, and whoever listens (the `longmix run` display) hears each step
start, finish (or come from the cache) and fail."""

from __future__ import annotations

from collections.abc import Callable

Listener = Callable[[str, str], None]  # (step name, "running" | "completed" | "cached" | "failed")
_listeners: list[Listener] = []


def dataset_step(stage: str) -> str:
    """The name of the step that builds a training stage's dataset (and of its progress row)."""
    return f"dataset {stage}"


def train_step(stage: str) -> str:
    return f"train {stage}"


def listen(listener: Listener) -> Callable[[], None]:
    """Add a listener; returns the function that removes it."""
    _listeners.append(listener)
    return lambda: _listeners.remove(listener)


def _notify(task_run, event: str) -> None:
    for listener in list(_listeners):
        listener(task_run.name.rsplit("-", 1)[0], event)


def on_running(task, task_run, state) -> None:
    _notify(task_run, "running")


def on_completion(task, task_run, state) -> None:
    _notify(task_run, "cached" if state.name == "Cached" else "completed")


def on_failure(task, task_run, state) -> None:
    _notify(task_run, "failed")
