"""DICOM images: folder scan (:mod:`~medmm.data.dicom.scan`), pixel decoding
(:mod:`~medmm.data.dicom.pixels`), the pixel cache (:mod:`~medmm.data.dicom.cache`), labels
(:mod:`~medmm.data.dicom.labels`), a table row's image cell -> one instance
(:mod:`~medmm.data.dicom.series`) and the torch dataset (:mod:`~medmm.data.dicom.dataset`).

Import-light on purpose: the torch-free runtime imports ``pixels``, ``scan`` and ``series``, so
nothing is imported here (``dataset`` imports torch).
"""
