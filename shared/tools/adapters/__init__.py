"""One module per framework, each the ``shared.tools.adapter.Adapter`` of its framework: loaded
by name (``adapter.load``) inside a worker process, never imported by the rest of the tools."""
