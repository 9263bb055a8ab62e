"""From the PACS and back: DICOMweb data in, de-identified in memory (:mod:`medmm.pacs.pull`),
DICOM SR reports out over STOW-RS (:mod:`medmm.pacs.push`), and a DICOMweb ``--data`` source read
into a temporary de-identified folder for any command (:mod:`medmm.pacs.local`)."""
