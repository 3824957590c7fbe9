"""The agent's link to the trainer: :mod:`agent.link.session` (socket, hello, heartbeat,
backoff, credit), :mod:`agent.link.jobs` (what each event means for one job, pure) and
:mod:`agent.link.transfer` (the upload window and the bundle download)."""

from agent.link.link import TrainerLink

__all__ = ["TrainerLink"]
