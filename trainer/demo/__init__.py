"""``robot-demo``: the whole loop on the sim cell, watched from the agent's event stream.

Modules: :mod:`trainer.demo.analysis` (pure: segments, Wilson intervals, the summary),
:mod:`trainer.demo.logread` (reads the agent's grasp log read-only), :mod:`trainer.demo.plot`
(the PNG), :mod:`trainer.demo.live` (pure: the terminal view of PUB events),
:mod:`trainer.demo.setup` (pure: schedules and the generated configs),
:mod:`trainer.demo.run` (the child processes and the CLI). None of them imports torch.
"""
