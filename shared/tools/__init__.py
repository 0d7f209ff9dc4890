"""The tools beside the library: the ``resnet-parity`` command line (``check``, ``bench``,
``info``, ``convert``, ``export``), their worker processes, and one adapter per framework
(``shared.tools.adapter``). The core (``shared``) and the framework packages never import this
package; the adapters import the framework packages, and only inside a worker process.
"""
