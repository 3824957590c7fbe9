"""The robot bridge: the agent drives a robot-side process over ZeroMQ (docs/bridge.md).

``protocol`` (pure messages), ``config`` (typed settings), ``client`` (the agent's
:class:`~drivers.bridge.client.BridgeDriver`), ``server`` (the library an integrator
wraps their arm with). Import the submodules; this package imports nothing.
"""
