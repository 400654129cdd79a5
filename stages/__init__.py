"""landfuse: reproducible multimodal remote-sensing land-cover classification.

Each pipeline stage is a module with a function API and a ``python -m stages.<stage>`` CLI:
``twin``, ``download``, ``coregister``, ``patches``, ``augment``, ``tracking``, ``train``,
``evaluate`` and ``report``. Libraries live in sub-packages: ``stages.datasets`` (readers and
twins), ``stages.data`` (the patch store and its samplers), ``stages.models`` (the model registry),
``stages.gan`` and ``stages.io``.
"""

__version__ = "0.1.0"
