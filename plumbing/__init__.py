"""Process plumbing shared by robot-agent, the robot bridge and robot-trainer (no robot logic).

Each rule is written once here: config loading (:mod:`plumbing.config_loader`), CURVE keys
and the loopback rule (:mod:`plumbing.curve`), stop signals and systemd notification
(:mod:`plumbing.signals`, :mod:`plumbing.sd_notify`), retry delays (:mod:`plumbing.backoff`),
atomic writes (:mod:`plumbing.atomic`), safe names (:mod:`plumbing.names`) and missing extras
(:mod:`plumbing.extras`). Standard library plus pyzmq only: the robot install ships it.
"""
