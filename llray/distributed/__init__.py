"""Ray at the edge: learner actors, the sweep driver, the local/cluster connection.

Importing this package imports Ray; callers that start an embedded Ray must call
:func:`llray.distributed.session.loopback_only` before the first import of ``ray``.
"""
