"""Platform adapters: one thin module per binding, outside the core.

``mount.fuse`` (mfusepy / libfuse3, Linux) and ``mount.winfsp`` (winfspy,
Windows) translate a binding's callbacks into ``vspfs`` core calls and core
errors into errno / NTSTATUS. They live outside ``vspfs/`` so that the core
never imports a binding: the CLI, ``vspfs cleanup`` and the engine tests work
on machines where no binding is installed. Nothing is imported here for the
same reason; the daemon imports the adapter it needs when it starts.
"""

from __future__ import annotations
