"""``robot-demo``: the whole loop on the sim cell, watched from the agent's event stream.

Modules: :mod:`trainer.demo.timeline` (pure: grasps, events placed at grasp indices,
markers, explorations), :mod:`trainer.demo.analysis` (pure: segments, Wilson intervals, the
summary), :mod:`trainer.demo.report` (the summary as text), :mod:`trainer.demo.logread`
(reads the agent's grasp log read-only), :mod:`trainer.demo.plot` (the PNG),
:mod:`trainer.demo.live` (pure: the terminal view of PUB events), :mod:`trainer.demo.setup`
(pure: schedules and the generated configs), :mod:`trainer.demo.options` (the options and
the command line), :mod:`trainer.demo.procs` (child processes, the event stream, the
console) and :mod:`trainer.demo.run` (the run and ``main``). None of them imports torch.
"""
